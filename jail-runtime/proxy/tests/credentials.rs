//! Credentials in the proxy, in-process and as any user: a loopback HTTPS upstream that echoes
//! what it received (headers, query, body), the proxy intercepting TLS with its own CA, the
//! credentials' values in a directory like the sidecar's mounted Secret, and the audit trail
//! read back. Proves: the upstream receives the real value (header format, bare header, basic),
//! placeholders are replaced in other headers and the query, leak attempts to another allowed
//! host (header, query, body split across chunks) get 403 and one audit line with `leak`,
//! rotation without a restart, a missing value refused, plain HTTP never carries a credential,
//! and no audit line holds a real value.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use boundary_api::Mode;
use boundary_api::credentials::{
    self as api, BasicAuthInjection, Credential, CredentialDestination, CredentialValue,
    HeaderInjection, Injection, SecretKeyRef,
};
use boundary_api::rules::{self, RuleSet, RuleSource};
use boundary_proxy::audit::{Format, Identity, Options, Sink};
use boundary_proxy::credentials::CredentialSet;
use boundary_proxy::credentials::values::ValueSource;
use boundary_proxy::policy::{PolicyStore, Source};
use boundary_proxy::tls::CertAuthority;
use boundary_proxy::{Destination, Proxy, ProxyConfig};
use boundary_test_kit::{Alpn, TestCa, TestServer};
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::UnixStream;

const NONCE: &str = "abcdefghijklmnop";
const API_VALUE: &str = "sk-real-api-value-0001";
const GIT_VALUE: &str = "git-real-password-0002";
/// The bound host and another host the rules allow.
const BOUND: &str = "api.test";
const OTHER: &str = "open.test";

fn placeholder(name: &str) -> String {
    api::placeholder(NONCE, name)
}

/// What the upstream received, one request each.
#[derive(Debug, Default, Clone)]
struct Seen {
    requests: Arc<Mutex<Vec<String>>>,
}

/// Answers with what it received: `host`, `query`, each header and the body, one per line.
async fn echo(request: Request<Incoming>, seen: Seen) -> Response<BoxBody<Bytes, Infallible>> {
    let mut text = format!(
        "host={}\nquery={}\n",
        request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
        request.uri().query().unwrap_or_default()
    );
    for (name, value) in request.headers() {
        let _ = writeln!(text, "{name}={}", String::from_utf8_lossy(value.as_bytes()));
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let _ = writeln!(text, "body={}", String::from_utf8_lossy(&body));
    seen.requests.lock().unwrap().push(text.clone());
    Response::new(http_body_util::Full::new(Bytes::from(text)).boxed())
}

struct Setup {
    proxy: Proxy,
    ca_pem: String,
    audit: PathBuf,
    values: PathBuf,
    upstream: TestServer,
    seen: Seen,
    ca: TestCa,
    _dir: TempDir,
}

fn header_credential(name: &str, header: &str, format: Option<&str>) -> Credential {
    Credential {
        name: name.into(),
        secret_key_ref: Some(SecretKeyRef {
            name: format!("{name}-secret"),
            key: "token".into(),
        }),
        destinations: vec![CredentialDestination {
            domains: vec![BOUND.into()],
            paths: vec![format!("/{name}/*")],
            ..Default::default()
        }],
        inject: Injection {
            header: Some(HeaderInjection {
                name: header.into(),
                format: format.map(Into::into),
            }),
            ..Default::default()
        },
        env: Some("TOKEN".into()),
    }
}

fn write_value(dir: &Path, key: &str, value: &str) {
    // Written aside and renamed, as the kubelet swaps a Secret volume's files.
    let tmp = dir.join(format!(".{key}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec(&CredentialValue::Value(value.into())).unwrap(),
    )
    .unwrap();
    std::fs::rename(tmp, dir.join(key)).unwrap();
}

impl Setup {
    async fn start() -> Setup {
        Setup::start_in(Mode::Enforce).await
    }

    async fn start_in(mode: Mode) -> Setup {
        Setup::start_with(mode, Options::default()).await
    }

    async fn start_with(mode: Mode, audit_options: Options) -> Setup {
        let ca = TestCa::new();
        let seen = Seen::default();
        let handler_seen = seen.clone();
        let upstream = TestServer::serving(
            Some(ca.server_config(&[BOUND, OTHER], Alpn::Http1)),
            move |request| echo(request, handler_seen.clone()),
        )
        .await;
        // In Audit mode only the bound host has a rule: the other one is let through as
        // would-deny.
        let mut allow = vec![format!("domain={BOUND}")];
        if mode == Mode::Enforce {
            allow.push(format!("domain={OTHER}"));
        }
        let compiled = rules::compile(RuleSource {
            policy: Some("agent"),
            field_prefix: "spec.",
            allow: &allow,
            ..RuleSource::default()
        })
        .unwrap();
        let specs = vec![
            header_credential("api", "authorization", Some("Bearer {value}")),
            header_credential("bare", "x-api-key", None),
            Credential {
                name: "git".into(),
                inject: Injection {
                    basic_auth: Some(BasicAuthInjection {
                        username: "x-access-token".into(),
                    }),
                    ..Default::default()
                },
                ..header_credential("git", "unused", None)
            },
            header_credential("unset", "x-unset", None),
        ];
        let set = CredentialSet::new([(Some("agent"), specs.as_slice())], Some(NONCE));
        assert_eq!(set.names(), ["api", "bare", "git", "unset"]);
        let dir = tempfile::Builder::new().prefix("creds").tempdir().unwrap();
        let values = dir.path().join("credentials");
        std::fs::create_dir(&values).unwrap();
        write_value(&values, &api::value_key("agent", "api"), API_VALUE);
        write_value(
            &values,
            &api::value_key("agent", "bare"),
            "bare-real-value-0003",
        );
        write_value(&values, &api::value_key("agent", "git"), GIT_VALUE);
        let audit = dir.path().join("audit.jsonl");
        let proxy_ca = CertAuthority::generate("credentials").unwrap();
        let ca_pem = proxy_ca.ca_pem().to_owned();
        let resolve: HashMap<String, IpAddr> = [BOUND, OTHER]
            .iter()
            .map(|n| ((*n).to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST)))
            .collect();
        let policy = PolicyStore::load(Source::Static(Arc::new(RuleSet::new(compiled, mode))))
            .unwrap()
            .with_credentials(set);
        let proxy = Proxy::start(ProxyConfig {
            session: "credentials".into(),
            identity: Identity::default(),
            tier: None,
            policy,
            upstream_cas: vec![ca.pem_path.clone()],
            resolve,
            upstream_dns: None,
            audit: Sink::File(audit.clone()),
            audit_options,
            ca: Arc::new(proxy_ca),
            upstream_timeout: Duration::from_secs(10),
            credential_values: ValueSource::Dir(values.clone()),
        })
        .unwrap();
        Setup {
            proxy,
            ca_pem,
            audit,
            values,
            upstream,
            seen,
            ca,
            _dir: dir,
        }
    }

    fn connect(&self, name: &str) -> UnixStream {
        self.connect_port(name, self.upstream.port())
    }

    fn connect_port(&self, name: &str, port: u16) -> UnixStream {
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

    /// An HTTP/1.1 client over TLS the proxy intercepts, to `name`.
    async fn https(&self, name: &'static str) -> Sender {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
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
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from(name).unwrap(),
                self.connect(name),
            )
            .await
            .unwrap();
        Sender::handshake(tls, name, self.upstream.port()).await
    }

    /// A plain HTTP/1.1 client to `name` on `port`.
    async fn http(&self, name: &'static str, port: u16) -> Sender {
        Sender::handshake(self.connect_port(name, port), name, port).await
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }

    /// The audit lines once there are `count`; then, after the writer had time for more,
    /// exactly `count`.
    async fn audit_lines(&self, count: usize) -> Vec<Value> {
        for _ in 0..100 {
            self.proxy.flush().await;
            if self.audit_text().lines().count() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.proxy.flush().await;
        let text = self.audit_text();
        for secret in [API_VALUE, GIT_VALUE, "bare-real-value-0003", NONCE] {
            assert!(
                !text.contains(secret),
                "the audit trail shows a real value or a nonce:\n{text}"
            );
        }
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), count, "one audit line each: {lines:#?}");
        lines
    }

    fn upstream_saw(&self) -> Vec<String> {
        self.seen.requests.lock().unwrap().clone()
    }
}

type Body = BoxBody<Bytes, Infallible>;

struct Sender {
    send: hyper::client::conn::http1::SendRequest<Body>,
    host: String,
}

impl Sender {
    async fn handshake<S>(io: S, name: &str, port: u16) -> Sender
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        Sender {
            send,
            host: format!("{name}:{port}"),
        }
    }

    /// `method path` with `headers` and `body`: (status, body).
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> (u16, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match self.send.send_request(req.body(body).unwrap()).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
            Err(e) => (0, format!("the connection failed: {e}")),
        }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.request("GET", path, headers, empty()).await
    }
}

fn empty() -> Body {
    http_body_util::Empty::new().boxed()
}

/// A body sent as these chunks, one at a time with a pause between them, so the proxy reads
/// them as separate pieces.
struct Paced {
    chunks: VecDeque<Bytes>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let Some(chunk) = self.chunks.pop_front() else {
            return Poll::Ready(None);
        };
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(30))));
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

fn paced(chunks: &[&str]) -> Body {
    Paced {
        chunks: chunks.iter().map(|c| Bytes::from(c.to_string())).collect(),
        pause: None,
    }
    .boxed()
}

fn field<'a>(line: &'a Value, key: &str) -> &'a str {
    line[key].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_upstream_receives_the_real_value_where_the_placeholders_were() {
    let s = Setup::start().await;
    let mut client = s.https(BOUND).await;
    let (status, body) = client
        .get(
            &format!("/api/items?token={}&x=1", placeholder("api")),
            &[
                ("authorization", &format!("Bearer {}", placeholder("api"))),
                ("x-custom", &format!("key {}", placeholder("api"))),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("authorization=Bearer {API_VALUE}\n")),
        "{body}"
    );
    assert!(
        body.contains(&format!("x-custom=key {API_VALUE}\n")),
        "{body}"
    );
    assert!(
        body.contains(&format!("query=token={API_VALUE}&x=1\n")),
        "{body}"
    );
    assert!(
        !body.contains("boundary-ph-"),
        "no placeholder left: {body}"
    );

    // A bare header value, set though the client sent none.
    let (status, body) = client.get("/bare/x", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-api-key=bare-real-value-0003\n"), "{body}");

    // Basic auth: the user and the value, whatever the client sent.
    let (status, body) = client
        .get("/git/info", &[("authorization", "Basic Zm9vOmJhcg==")])
        .await;
    assert_eq!(status, 200, "{body}");
    let expected = base64_encode(&format!("x-access-token:{GIT_VALUE}"));
    assert!(
        body.contains(&format!("authorization=Basic {expected}\n")),
        "{body}"
    );

    let lines = s.audit_lines(3).await;
    assert_eq!(field(&lines[0], "credential"), "api", "{}", lines[0]);
    assert_eq!(field(&lines[0], "decision"), "allow");
    assert_eq!(field(&lines[1], "credential"), "bare");
    assert_eq!(field(&lines[2], "credential"), "git");
    let metrics = s.proxy.metrics().render(0);
    assert!(
        metrics.contains("agent_boundary_credential_injections_total{credential=\"api\"} 1"),
        "{metrics}"
    );
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn leak_attempts_to_another_allowed_host_get_403_and_one_audit_line_each() {
    let s = Setup::start().await;
    let mut client = s.https(OTHER).await;
    let (status, body) = client
        .get("/", &[("x-api-key", &placeholder("bare"))])
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("credential leak attempt: placeholder or value of bare in header x-api-key"),
        "{body}"
    );
    let (status, body) = client
        .get(&format!("/files/{}", placeholder("api")), &[])
        .await;
    assert_eq!(status, 403, "{body}");
    // A real value the agent somehow had, in the query.
    let (status, _) = client.get(&format!("/?v={GIT_VALUE}"), &[]).await;
    assert_eq!(status, 403);
    assert!(s.upstream_saw().is_empty(), "nothing reached the upstream");

    let lines = s.audit_lines(3).await;
    let leaks: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (field(&l["leak"], "credential"), field(&l["leak"], "where")))
        .collect();
    assert_eq!(
        leaks,
        [
            ("bare", "header x-api-key"),
            ("api", "path"),
            ("git", "query")
        ]
    );
    for line in &lines {
        assert_eq!(field(line, "decision"), "deny");
        assert_eq!(line["status"], 403);
        assert!(
            field(line, "reason").starts_with("credential leak attempt:"),
            "{line}"
        );
    }
    assert_eq!(
        field(&lines[1], "path"),
        "/files/boundary-ph-…-api",
        "the path shows the placeholder redacted"
    );
    let metrics = s.proxy.metrics().render(0);
    assert!(
        metrics.contains("agent_boundary_credential_leaks_total{where=\"query\"} 1")
            && metrics.contains("agent_boundary_credential_leaks_total{where=\"header\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_placeholder_split_across_body_chunks_is_caught_before_it_leaves() {
    let s = Setup::start().await;
    let mut client = s.https(OTHER).await;
    let ph = placeholder("api");
    let (head, tail) = ph.split_at(7);
    let (status, body) = client
        .request(
            "POST",
            "/gists",
            &[("content-type", "application/json")],
            paced(&["{\"files\": {\"a\": \"", head, tail, "\"}}"]),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("credential leak attempt"), "{body}");
    for seen in s.upstream_saw() {
        assert!(!seen.contains("boundary-ph-"), "a needle went out: {seen}");
    }
    // A clean body in many pieces goes through whole.
    let mut client = s.https(OTHER).await;
    let pieces = ["a clean ", "body with boundary-p", "h but no ", "needle"];
    let (status, body) = client.request("POST", "/gists", &[], paced(&pieces)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("body={}\n", pieces.concat())),
        "{body}"
    );
    // With a Content-Length (the scanner holds bytes back, the length stays right).
    let clean = "x".repeat(100_000);
    let (status, body) = client
        .request(
            "POST",
            "/sized",
            &[],
            http_body_util::Full::new(Bytes::from(clean.clone())).boxed(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("content-length=100000\n"), "{}", &body[..200]);
    assert!(
        body.contains(&format!("body={clean}\n")),
        "the whole body arrived"
    );

    let lines = s.audit_lines(3).await;
    assert_eq!(
        field(&lines[0]["leak"], "credential"),
        "api",
        "{}",
        lines[0]
    );
    assert_eq!(field(&lines[0]["leak"], "where"), "body");
    assert_eq!(lines[0]["status"], 403);
    assert!(lines[1].get("leak").is_none());
}

#[tokio::test]
async fn a_rotated_value_is_used_by_the_next_request_without_a_restart() {
    let s = Setup::start().await;
    let mut client = s.https(BOUND).await;
    let (_, body) = client.get("/api/x", &[]).await;
    assert!(body.contains(API_VALUE), "{body}");
    write_value(
        &s.values,
        &api::value_key("agent", "api"),
        "sk-rotated-value-0009",
    );
    let mut rotated = false;
    for _ in 0..50 {
        let (status, body) = client.get("/api/x", &[]).await;
        assert_eq!(status, 200, "{body}");
        if body.contains("authorization=Bearer sk-rotated-value-0009\n") {
            rotated = true;
            break;
        }
        assert!(body.contains(API_VALUE), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the new value is used");
    // The old value is now another credential's secret no more: it is not in the trail either.
    assert!(!s.audit_text().contains("sk-rotated-value-0009"));
}

#[tokio::test]
async fn a_bound_credential_without_a_value_is_refused() {
    let s = Setup::start().await;
    let mut client = s.https(BOUND).await;
    let (status, body) = client.get("/unset/x", &[]).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(
            "credential unset has no value: Secret \"unset-secret\" key \"token\" did not reach \
             the proxy (see the policy's status)"
        ),
        "{body}"
    );
    assert!(s.upstream_saw().is_empty());
    let lines = s.audit_lines(1).await;
    assert_eq!(field(&lines[0], "decision"), "deny");
    assert!(field(&lines[0], "reason").contains("has no value"));
}

#[tokio::test]
async fn plain_http_to_a_bound_host_never_carries_a_credential() {
    let s = Setup::start().await;
    let seen = Seen::default();
    let handler_seen = seen.clone();
    let plain = TestServer::serving(None, move |request| echo(request, handler_seen.clone())).await;
    let mut client = s.http(BOUND, plain.port()).await;
    let (status, body) = client
        .get(
            "/api/x",
            &[("authorization", &format!("Bearer {}", placeholder("api")))],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("over plain http"), "{body}");
    // Without a placeholder, the request goes out as it is: nothing put in.
    let (status, body) = client.get("/api/x", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("authorization="), "{body}");
    assert!(!body.contains(API_VALUE), "{body}");
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
    let lines = s.audit_lines(2).await;
    assert_eq!(field(&lines[0]["leak"], "credential"), "api");
    assert!(lines[1].get("credential").is_none(), "{}", lines[1]);
}

#[tokio::test]
async fn a_placeholder_in_a_host_name_is_redacted_in_the_audit_trail() {
    let s = Setup::start().await;
    let name: &'static str = "boundary-ph-abcdefghijklmnop-api.exfil.test";
    let mut client = s.http(name, s.upstream.port()).await;
    let (status, body) = client.get("/", &[]).await;
    assert_eq!(status, 403, "no rule allows the host: {body}");
    let lines = s.audit_lines(1).await;
    assert_eq!(field(&lines[0], "host"), "boundary-ph-…-api.exfil.test");
}

#[tokio::test]
async fn in_audit_mode_a_leak_attempt_is_still_refused() {
    let s = Setup::start_in(Mode::Audit).await;
    // No rule allows this host: Audit lets it through, but not with a placeholder.
    let mut client = s.https(OTHER).await;
    let (status, body) = client.get("/ok", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = client.get("/", &[("x-api-key", &placeholder("api"))]).await;
    assert_eq!(status, 403, "{body}");
    let lines = s.audit_lines(2).await;
    assert_eq!(field(&lines[0], "decision"), "would-deny");
    assert_eq!(field(&lines[1], "decision"), "deny");
    assert_eq!(field(&lines[1], "mode"), "Audit");
    assert_eq!(field(&lines[1]["leak"], "credential"), "api");
}

#[tokio::test]
async fn a_leak_in_a_body_the_upstream_answered_early_is_still_stopped_and_audited_once() {
    let s = Setup::start().await;
    // An upstream on the other host that answers at once and reads the body afterwards.
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let kept = received.clone();
    let early = TestServer::serving(
        Some(s.ca.server_config(&[OTHER], Alpn::Http1)),
        move |request: Request<Incoming>| {
            let kept = kept.clone();
            async move {
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Some(data) = frame.data_ref() {
                            kept.lock().unwrap().extend_from_slice(data);
                        }
                    }
                });
                Response::new(http_body_util::Full::new(Bytes::from_static(b"early\n")).boxed())
            }
        },
    )
    .await;
    let stream = s.connect_port(OTHER, early.port());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(s.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(OTHER).unwrap(),
            stream,
        )
        .await
        .unwrap();
    let mut client = Sender::handshake(tls, OTHER, early.port()).await;
    let ph = placeholder("api");
    let (status, body) = client
        .request(
            "POST",
            "/upload",
            &[],
            paced(&["first part, ", "second part, ", &ph, " end"]),
        )
        .await;
    assert!(status == 200 || status == 403, "{status} {body}");
    // Whichever came first, the leak is recorded exactly once.
    let mut leaks = Vec::new();
    for _ in 0..50 {
        s.proxy.flush().await;
        leaks = s
            .audit_text()
            .lines()
            .filter(|l| l.contains("\"leak\""))
            .map(str::to_owned)
            .collect();
        if !leaks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.proxy.flush().await;
    let again = s
        .audit_text()
        .lines()
        .filter(|l| l.contains("\"leak\""))
        .count();
    assert_eq!(again, 1, "one leak record: {leaks:?}");
    assert!(leaks[0].contains("\"where\":\"body\""), "{leaks:?}");
    let sent = received.lock().unwrap().clone();
    assert!(
        memchr_find(&sent, b"boundary-ph-").is_none(),
        "the upstream never got the placeholder: {}",
        String::from_utf8_lossy(&sent)
    );
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

mod ocsf_schema;

#[tokio::test]
async fn ocsf_lines_of_credentials_are_valid_and_redacted_as_json_lines_are() {
    let s = Setup::start_with(
        Mode::Enforce,
        Options {
            format: Format::Ocsf,
            rotation: None,
        },
    )
    .await;
    let mut client = s.https(BOUND).await;
    // Injected: the placeholder in the path and the query, the value sent upstream.
    let (status, body) = client
        .get(
            &format!(
                "/api/{}/items?token={}",
                placeholder("api"),
                placeholder("api")
            ),
            &[("authorization", &format!("Bearer {}", placeholder("api")))],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Leak attempts to another allowed host: header, path, a real value in the query.
    let mut other = s.https(OTHER).await;
    let (status, _) = other.get("/", &[("x-api-key", &placeholder("bare"))]).await;
    assert_eq!(status, 403);
    let (status, _) = other
        .get(&format!("/files/{}", placeholder("api")), &[])
        .await;
    assert_eq!(status, 403);
    let (status, _) = other.get(&format!("/?v={GIT_VALUE}"), &[]).await;
    assert_eq!(status, 403);
    // `audit_lines` also checks that no value and no nonce is in the trail.
    let lines = s.audit_lines(4).await;
    ocsf_schema::assert_valid(&lines);
    let text = serde_json::to_string(&lines).unwrap();
    assert!(
        !text.contains("token=") && !text.contains("v="),
        "no query: {text}"
    );
    assert_eq!(lines[0]["unmapped"]["credential"], "api");
    assert_eq!(
        lines[0]["http_request"]["url"]["path"], "/api/boundary-ph-…-api/items",
        "placeholders are shown redacted"
    );
    let leaks: Vec<(&str, &str)> = lines[1..]
        .iter()
        .map(|l| {
            assert_eq!(l["action_id"], 2, "{l}");
            assert_eq!(l["http_response"]["code"], 403, "{l}");
            (
                field(&l["unmapped"]["leak"], "credential"),
                field(&l["unmapped"]["leak"], "where"),
            )
        })
        .collect();
    assert_eq!(
        leaks,
        [
            ("bare", "header x-api-key"),
            ("api", "path"),
            ("git", "query")
        ]
    );
    assert_eq!(
        lines[2]["http_request"]["url"]["path"],
        "/files/boundary-ph-…-api"
    );
}

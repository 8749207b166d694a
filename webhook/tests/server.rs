//! The webhook's HTTPS server against real TLS clients on loopback: reviews, hostile input,
//! slow clients, certificate rotation through a Secret volume, probes and metrics.
//!
//! Nothing here asserts how long something takes: "eventually" waits poll with generous
//! deadlines, and the timeouts under test are short but far above a loaded machine's latency.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use boundary_test_kit::{Alpn, TestCa};
use boundary_webhook::review::{self, AdmissionRequest, AdmissionResponse, Admit};
use boundary_webhook::server::{Config, Server, Stopped};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long "eventually" may take on a loaded machine.
const EVENTUALLY: Duration = Duration::from_mins(1);

// ---------------------------------------------------------------------------------------------
// The decider under the server.

/// Denies `deny-me`, admits `allow-me` unchanged, panics on `panic`, patches anything else.
/// `waits` is decided only by the asynchronous path, after a wait (as image lookups do), and
/// `panic-later` panics there after the wait. `held` is admitted by the asynchronous path once
/// the test adds a permit to `held` (a review kept in flight as long as the test wants).
struct TestAdmit {
    held: Arc<tokio::sync::Semaphore>,
}

fn test_patch() -> Vec<u8> {
    serde_json::to_vec(&json!([
        {"op": "add", "path": "/metadata/annotations", "value": {"test/patched": "true"}}
    ]))
    .unwrap()
}

impl Admit for TestAdmit {
    fn admit(&self, request: &AdmissionRequest) -> AdmissionResponse {
        let name = request.object_name();
        match name.as_str() {
            "deny-me" => AdmissionResponse::deny(&request.uid, "denied by the test decider"),
            "allow-me" => AdmissionResponse::allow(&request.uid),
            "panic" => panic!("the test decider panics on purpose"),
            "waits" | "held" => {
                AdmissionResponse::deny(&request.uid, "the synchronous path was taken")
            }
            _ => {
                let mut response = AdmissionResponse::patched(&request.uid, test_patch());
                response.warnings.push("patched by the test decider".into());
                response
                    .audit_annotations
                    .insert("agentboundary.dev/decision".into(), "patched".into());
                response
            }
        }
    }

    fn admit_async<'a>(
        &'a self,
        request: &'a AdmissionRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AdmissionResponse> + Send + 'a>> {
        Box::pin(async move {
            match request.object_name().as_str() {
                "waits" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let mut response = AdmissionResponse::allow(&request.uid);
                    response.warnings.push("decided after waiting".into());
                    response
                }
                "held" => {
                    self.held.acquire().await.unwrap().forget();
                    AdmissionResponse::allow(&request.uid)
                }
                "panic-later" => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    panic!("the test decider panics on purpose, after a wait")
                }
                _ => self.admit(request),
            }
        })
    }
}

fn review_body(uid: &str, name: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "team-a",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "team-a"},
                "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Certificates and a Secret volume.

/// The webhook's serving certificate and key (PEM), for `localhost` and 127.0.0.1.
fn serving_pair(ca: &TestCa) -> (String, String) {
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    (leaf.cert_pem, leaf.key_pem)
}

/// A directory laid out and updated the way the kubelet maintains a Secret volume:
/// `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`, updates swap `..data` atomically.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new(files: &[(&str, &[u8])]) -> SecretVolume {
        let dir = tempfile::tempdir().unwrap();
        let mut volume = SecretVolume { dir, generation: 0 };
        volume.update(files);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), volume.path(name)).unwrap();
        }
        volume
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn current_dir(&self) -> PathBuf {
        self.path(&format!("..2026_01_01_00_00_00.{:09}", self.generation))
    }

    /// Replaces the volume's files as the kubelet's atomic writer does.
    fn update(&mut self, files: &[(&str, &[u8])]) {
        let old = (self.generation > 0).then(|| self.current_dir());
        self.generation += 1;
        let new = self.current_dir();
        std::fs::create_dir(&new).unwrap();
        for (name, content) in files {
            std::fs::write(new.join(name), content).unwrap();
        }
        let tmp = self.path("..data_tmp");
        std::os::unix::fs::symlink(new.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.path("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test.

struct TestServer {
    https: SocketAddr,
    plain: SocketAddr,
    ready: Arc<AtomicBool>,
    /// Permits for `held` reviews.
    held: Arc<tokio::sync::Semaphore>,
    ca: TestCa,
    volume: SecretVolume,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<Stopped>>,
}

impl TestServer {
    async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let ca = TestCa::named("test CA one");
        let (cert, key) = serving_pair(&ca);
        let volume =
            SecretVolume::new(&[("tls.crt", cert.as_bytes()), ("tls.key", key.as_bytes())]);
        let mut config = Config {
            https_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            plain_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_file: volume.path("tls.crt"),
            key_file: volume.path("tls.key"),
            max_body_bytes: 256 << 10,
            cert_poll_interval: Duration::from_millis(100),
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(5),
            ..Config::default()
        };
        tweak(&mut config);
        let ready = Arc::new(AtomicBool::new(false));
        let held = Arc::new(tokio::sync::Semaphore::new(0));
        let admit = TestAdmit { held: held.clone() };
        let server = Server::bind(config, Arc::new(admit), ready.clone())
            .await
            .unwrap();
        let (https, plain) = (server.https_addr(), server.plain_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            https,
            plain,
            ready,
            held,
            ca,
            volume,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn client(&self) -> H1 {
        H1::connect(self.https, &self.ca).await.unwrap()
    }

    /// One review on a new connection; a server that does not answer fails the test (rather
    /// than hanging it).
    async fn review(&self, uid: &str, name: &str) -> Reply {
        let exchange = async {
            self.client()
                .await
                .post_json("/mutate", &review_body(uid, name).to_string())
                .await
                .unwrap()
        };
        tokio::time::timeout(EVENTUALLY, exchange)
            .await
            .expect("the server did not answer a review")
    }

    /// One line of `/metrics`, e.g. `reviews_total{result="patched"}` (prefix added).
    async fn metric(&self, series: &str) -> u64 {
        let text = plain_get(self.plain, "/metrics").await.text();
        let wanted = format!("agent_boundary_webhook_{series} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&wanted))
            .unwrap_or_else(|| panic!("no {wanted:?} in\n{text}"))
            .parse()
            .unwrap()
    }

    async fn wait_for_metric(&self, series: &str, at_least: u64) {
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            let value = self.metric(series).await;
            if value >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {value}, expected {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The message of a `{"error": ...}` answer, which must be JSON.
    fn error(&self) -> String {
        assert_eq!(
            self.headers
                .get("content-type")
                .map(hyper::header::HeaderValue::as_bytes),
            Some(b"application/json".as_slice()),
            "{self:?}"
        );
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {self:?}"))
            .to_owned()
    }
}

async fn tls_connect(
    addr: SocketAddr,
    ca: &TestCa,
    alpn: Alpn,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    ca.connector(alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// An HTTP/1.1 keep-alive connection over TLS.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// Ends when the connection does.
    connection: JoinHandle<hyper::Result<()>>,
}

impl H1 {
    async fn connect(addr: SocketAddr, ca: &TestCa) -> Result<H1, String> {
        let tls = tls_connect(addr, ca, Alpn::Http1)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let connection = tokio::spawn(connection);
        Ok(H1 { sender, connection })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        // The connection is ready again only once it has seen the end of the last exchange,
        // which can come after the last response body was read.
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn post_json(&mut self, path: &str, body: &str) -> Result<Reply, String> {
        self.send(
            Method::POST,
            path,
            Some("application/json"),
            body.to_owned(),
        )
        .await
    }
}

/// An HTTP/2 connection over TLS (what the apiserver negotiates).
struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    /// Ends when the connection does.
    connection: JoinHandle<hyper::Result<()>>,
}

impl H2 {
    async fn connect(addr: SocketAddr, ca: &TestCa) -> H2 {
        let tls = tls_connect(addr, ca, Alpn::H2).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        H2 { sender, connection }
    }

    /// Sends a review; the answer is awaited by the returned task.
    fn review(&mut self, uid: &str, name: &str) -> JoinHandle<Result<Reply, String>> {
        let request = Request::post("https://localhost/mutate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(review_body(uid, name).to_string())))
            .unwrap();
        let sent = self.sender.send_request(request);
        tokio::spawn(async move {
            let response = sent.await.map_err(|e| e.to_string())?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        })
    }
}

/// Asserts that `reply` is the decider's answer to review `uid`.
fn assert_answered(reply: &Reply, uid: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let review = reply.json();
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    assert_eq!(review["response"]["uid"], uid, "{review}");
    assert!(review["response"]["allowed"].is_boolean(), "{review}");
}

/// Waits until nothing listens on `addr` any more.
async fn until_refused(addr: SocketAddr) {
    let deadline = Instant::now() + EVENTUALLY;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} kept accepting connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `/readyz` answers 503; returns its body.
async fn until_not_ready(plain: SocketAddr) -> String {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let reply = plain_get(plain, "/readyz").await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            return reply.text();
        }
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert!(Instant::now() < deadline, "/readyz stayed ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most EVENTUALLY) for a connection task to end.
async fn ended(connection: &mut JoinHandle<hyper::Result<()>>) -> hyper::Result<()> {
    tokio::time::timeout(EVENTUALLY, connection)
        .await
        .expect("the server did not close the connection")
        .unwrap()
}

async fn plain_get(addr: SocketAddr, path: &str) -> Reply {
    plain_send(addr, Method::GET, path).await
}

async fn plain_send(addr: SocketAddr, method: Method, path: &str) -> Reply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// Reads until the peer closes (or resets) the connection; `false` if it stays open `within`.
async fn closes_within(stream: &mut TcpStream, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// A client that sends the start of a TLS `ClientHello` and then nothing.
async fn stall_in_handshake(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // A handshake record header announcing 512 bytes, then one of them.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    tcp
}

/// A client that completes TLS, sends `sent` and then nothing; the TCP stream is returned
/// (what follows is only read to see whether the server closes).
async fn stall_after(addr: SocketAddr, ca: &TestCa, sent: &[u8]) -> TcpStream {
    let mut tls = tls_connect(addr, ca, Alpn::Http1).await.unwrap();
    tls.write_all(sent).await.unwrap();
    tls.flush().await.unwrap();
    tls.into_inner().0
}

const HALF_A_HEAD: &[u8] = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Ty";
const HALF_A_BODY: &[u8] = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\":";

/// Body filler for requests that declare their length.
static ZEROS: [u8; 64 << 10] = [b'0'; 64 << 10];
/// One 64 KiB chunk of a chunked body.
static CHUNK: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| [b"10000\r\n".as_slice(), &[b' '; 64 << 10], b"\r\n"].concat());

/// Sends `head` and then up to 256 MiB produced by `chunk`, while reading the answer. Returns
/// the raw answer and whether the whole body could be written (it must not: the server is to
/// stop reading at its limit).
async fn send_endless_body(
    server: &TestServer,
    head: &'static [u8],
    chunk: &'static [u8],
) -> (String, bool) {
    let tls = tls_connect(server.https, &server.ca, Alpn::Http1)
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let writing = tokio::spawn(async move {
        writer.write_all(head).await?;
        let mut sent = 0usize;
        while sent < 256 << 20 {
            writer.write_all(chunk).await?;
            sent += chunk.len();
        }
        writer.flush().await
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(EVENTUALLY, async {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    let wrote_everything = writing.is_finished() && matches!(writing.await, Ok(Ok(())));
    (
        String::from_utf8_lossy(&answer).into_owned(),
        wrote_everything,
    )
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_are_answered_with_the_deciders_response() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;

    let patched = client
        .post_json("/mutate", &review_body("uid-1", "web").to_string())
        .await
        .unwrap();
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    let review = patched.json();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["response"]["uid"], "uid-1");
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    assert_eq!(
        review["response"]["patch"],
        review::base64_encode(&test_patch())
    );
    assert_eq!(
        review["response"]["warnings"][0],
        "patched by the test decider"
    );

    // Same connection (keep-alive), a charset parameter on the content type.
    let denied = client
        .send(
            Method::POST,
            "/mutate",
            Some("application/json; charset=utf-8"),
            review_body("uid-2", "deny-me").to_string(),
        )
        .await
        .unwrap();
    assert_eq!(denied.status, StatusCode::OK, "{denied:?}");
    let review = denied.json();
    assert_eq!(review["response"]["uid"], "uid-2");
    assert_eq!(review["response"]["allowed"], false);
    assert_eq!(review["response"]["status"]["code"], 403);
    assert_eq!(
        review["response"]["status"]["message"],
        "denied by the test decider"
    );
    assert!(review["response"].get("patch").is_none());

    let allowed = server.review("uid-3", "allow-me").await;
    let review = allowed.json();
    assert_eq!(review["response"]["uid"], "uid-3");
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"].get("patch").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_over_http2_are_answered() {
    // The apiserver negotiates HTTP/2 when the webhook offers it.
    let server = TestServer::start(|_| {}).await;
    let tls = tls_connect(server.https, &server.ca, Alpn::H2AndHttp1)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut answers = Vec::new();
    for i in 0..3 {
        let request = Request::post("https://localhost/mutate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                review_body(&format!("h2-{i}"), "web").to_string(),
            )))
            .unwrap();
        answers.push(sender.send_request(request));
    }
    for (i, answer) in answers.into_iter().enumerate() {
        let response = answer.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let review: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["response"]["uid"], format!("h2-{i}"));
        assert_eq!(review["response"]["patchType"], "JSONPatch");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_no_admission_review_get_400_naming_the_problem() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let cases = [
        ("{", "not an AdmissionReview"),
        ("[1, 2]", "not an AdmissionReview"),
        ("", "not an AdmissionReview"),
        (
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
            "admissionReviewVersions",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"u"}}"#,
            "got admission.k8s.io/v1 Pod",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "has no request",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{}}}"#,
            "uid",
        ),
    ];
    for (body, problem) in cases {
        let reply = client.post_json("/mutate", body).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {reply:?}");
        let error = reply.error();
        assert!(error.contains(problem), "{body}: {error}");
    }
    assert_eq!(
        server.metric("reviews_total{result=\"bad_request\"}").await,
        cases.len() as u64
    );
    // Still serving on the same connection.
    let reply = client
        .post_json("/mutate", &review_body("after", "web").to_string())
        .await
        .unwrap();
    assert_eq!(reply.json()["response"]["uid"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_without_being_read_and_the_server_stays_up() {
    let server = TestServer::start(|_| {}).await;

    // Declared too large: refused before reading.
    let (answer, wrote_everything) = send_endless_body(
        &server,
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
        &ZEROS,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("larger than the limit of 262144 bytes"),
        "{answer}"
    );
    assert!(!wrote_everything, "the server read a body it had refused");

    // Chunked, no length: refused once the limit is passed.
    let (answer, wrote_everything) = send_endless_body(
        &server,
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        CHUNK.as_slice(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!wrote_everything, "the server read past its limit");

    // Exactly at the limit is fine (and not a review: 400, proving it was read and parsed).
    let mut client = server.client().await;
    let at_limit = " ".repeat(256 << 10);
    let reply = client.post_json("/mutate", &at_limit).await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    // One byte over, declared: written by a task while the answer is read, since the server
    // answers (and closes) before the body is through.
    let head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 262145\r\n\r\n";
    let (answer, _) = send_endless_body(&server, head, &ZEROS).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let reply = server.review("after", "web").await;
    assert_eq!(reply.json()["response"]["uid"], "after");
    assert_eq!(
        server
            .metric("bodies_rejected_total{reason=\"too_large\"}")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_method_or_path_is_refused() {
    let server = TestServer::start(|_| {}).await;
    let body = review_body("u", "web").to_string();
    for content_type in [Some("text/plain"), Some("application/jsonx"), None] {
        // A new connection each: whether one with an unread body is kept is hyper's choice.
        let reply = server
            .client()
            .await
            .send(Method::POST, "/mutate", content_type, body.clone())
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {reply:?}"
        );
        assert!(reply.error().contains("application/json"));
    }
    let mut client = server.client().await;
    let reply = client
        .send(Method::GET, "/mutate", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{reply:?}");
    assert_eq!(reply.headers.get("allow").unwrap(), "POST");
    reply.error();
    let reply = client.post_json("/validate", &body).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert!(reply.error().contains("/validate"));
    // The probes live on the plain listener only.
    let reply = client
        .send(Method::GET, "/healthz", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(
        server
            .metric("bodies_rejected_total{reason=\"content_type\"}")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_decider_gives_500_and_the_next_review_is_served() {
    let server = TestServer::start(|_| {}).await;
    let mut client = server.client().await;
    let reply = client
        .post_json("/mutate", &review_body("boom", "panic").to_string())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert!(reply.error().contains("boom"));
    // Same connection, then a new one.
    let reply = client
        .post_json("/mutate", &review_body("next", "web").to_string())
        .await
        .unwrap();
    assert_eq!(reply.json()["response"]["uid"], "next");
    assert_eq!(
        server.review("again", "web").await.json()["response"]["uid"],
        "again"
    );
    assert_eq!(server.metric("reviews_total{result=\"error\"}").await, 1);
    assert_eq!(server.metric("in_flight_requests").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_awaits_the_asynchronous_decider_and_catches_its_panics() {
    let server = TestServer::start(|_| {}).await;
    let reply = server.review("w1", "waits").await;
    assert_eq!(reply.json()["response"]["allowed"], true, "{reply:?}");
    assert_eq!(
        reply.json()["response"]["warnings"],
        json!(["decided after waiting"])
    );
    let mut client = server.client().await;
    let reply = client
        .post_json(
            "/mutate",
            &review_body("boom-later", "panic-later").to_string(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    assert!(reply.error().contains("boom-later"));
    assert_eq!(
        server.review("after", "web").await.json()["response"]["uid"],
        "after"
    );
    assert_eq!(server.metric("in_flight_requests").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_head_is_cut_off_while_others_are_served() {
    let server = TestServer::start(|c| c.header_read_timeout = Duration::from_secs(2)).await;
    let mut staller = stall_after(server.https, &server.ca, HALF_A_HEAD).await;
    assert_eq!(
        server.review("meanwhile", "web").await.json()["response"]["uid"],
        "meanwhile"
    );
    assert!(
        closes_within(&mut staller, EVENTUALLY).await,
        "the stalled client was never disconnected"
    );
    server
        .wait_for_metric("connection_failures_total{reason=\"header_timeout\"}", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_cut_off_while_others_are_served() {
    let server = TestServer::start(|c| c.tls_handshake_timeout = Duration::from_secs(2)).await;
    let mut staller = stall_in_handshake(server.https).await;
    assert_eq!(
        server.review("meanwhile", "web").await.json()["response"]["uid"],
        "meanwhile"
    );
    assert!(
        closes_within(&mut staller, EVENTUALLY).await,
        "the stalled handshake was never disconnected"
    );
    server
        .wait_for_metric(
            "connection_failures_total{reason=\"tls_handshake_timeout\"}",
            1,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408() {
    let server = TestServer::start(|c| c.body_read_timeout = Duration::from_secs(2)).await;
    let mut tls = tls_connect(server.https, &server.ca, Alpn::Http1)
        .await
        .unwrap();
    tls.write_all(HALF_A_BODY).await.unwrap();
    tls.flush().await.unwrap();
    assert_eq!(
        server.review("meanwhile", "web").await.json()["response"]["uid"],
        "meanwhile"
    );
    let mut answer = Vec::new();
    let read = tokio::time::timeout(EVENTUALLY, async {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = tls.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the stalled body was never answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 2000 ms"), "{answer}");
    assert_eq!(
        server
            .metric("bodies_rejected_total{reason=\"timeout\"}")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_do_not_hold_up_others() {
    // Timeouts far longer than the test: the stallers are all still connected when the
    // other clients have been served, so nothing waited for them.
    let server = TestServer::start(|c| {
        c.tls_handshake_timeout = Duration::from_mins(10);
        c.header_read_timeout = Duration::from_mins(10);
        c.body_read_timeout = Duration::from_mins(10);
    })
    .await;
    let mut stallers = Vec::new();
    for _ in 0..5 {
        stallers.push(stall_in_handshake(server.https).await);
        stallers.push(stall_after(server.https, &server.ca, HALF_A_HEAD).await);
        stallers.push(stall_after(server.https, &server.ca, HALF_A_BODY).await);
    }
    for i in 0..10 {
        let uid = format!("served-{i}");
        assert_eq!(
            server.review(&uid, "web").await.json()["response"]["uid"],
            uid
        );
    }
    assert_eq!(
        plain_get(server.plain, "/healthz").await.status,
        StatusCode::OK
    );
    for staller in &mut stallers {
        assert!(
            !closes_within(staller, Duration::from_millis(100)).await,
            "a staller was disconnected"
        );
    }
    // The five stalled bodies are requests in flight.
    assert_eq!(server.metric("in_flight_requests").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_in_a_secret_volume_is_served() {
    let mut server = TestServer::start(|_| {}).await;
    let new_ca = TestCa::named("test CA two");
    assert!(
        H1::connect(server.https, &new_ca).await.is_err(),
        "a client trusting only the new CA connected before the rotation"
    );
    let (cert, key) = serving_pair(&new_ca);
    server
        .volume
        .update(&[("tls.crt", cert.as_bytes()), ("tls.key", key.as_bytes())]);

    let deadline = Instant::now() + EVENTUALLY;
    let mut client = loop {
        match H1::connect(server.https, &new_ca).await {
            Ok(client) => break client,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the new certificate was never served: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reply = client
        .post_json("/mutate", &review_body("rotated", "web").to_string())
        .await
        .unwrap();
    assert_eq!(reply.json()["response"]["uid"], "rotated");
    assert!(
        H1::connect(server.https, &server.ca).await.is_err(),
        "the old certificate is still served"
    );
    assert_eq!(
        server
            .metric("certificate_reloads_total{result=\"ok\"}")
            .await,
        1
    );
    assert_eq!(
        server
            .metric("certificate_reloads_total{result=\"error\"}")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_and_the_old_one_keeps_serving() {
    let mut server = TestServer::start(|_| {}).await;
    let new_ca = TestCa::named("test CA two");
    let (new_cert, new_key) = serving_pair(&new_ca);
    let (_, unrelated_key) = serving_pair(&new_ca);
    let half = &new_cert.as_bytes()[..new_cert.len() / 2];
    let bad_pairs: [&[(&str, &[u8])]; 4] = [
        &[("tls.crt", b"garbage"), ("tls.key", new_key.as_bytes())],
        &[
            ("tls.crt", new_cert.as_bytes()),
            ("tls.key", unrelated_key.as_bytes()),
        ],
        &[("tls.crt", half), ("tls.key", new_key.as_bytes())],
        &[("tls.crt", new_cert.as_bytes())],
    ];
    for (i, files) in bad_pairs.iter().enumerate() {
        server.volume.update(files);
        server
            .wait_for_metric("certificate_reloads_total{result=\"error\"}", i as u64 + 1)
            .await;
        let reply = server.review(&format!("still-{i}"), "web").await;
        assert_eq!(reply.json()["response"]["uid"], format!("still-{i}"));
        assert!(H1::connect(server.https, &new_ca).await.is_err());
    }
    // Half-written in place (not through the volume's swap).
    std::fs::write(
        server.volume.current_dir().join("tls.key"),
        "-----BEGIN PRIV",
    )
    .unwrap();
    server
        .wait_for_metric("certificate_reloads_total{result=\"error\"}", 5)
        .await;
    assert_eq!(
        server.review("in-place", "web").await.json()["response"]["uid"],
        "in-place"
    );

    // A good pair after all that is picked up.
    server.volume.update(&[
        ("tls.crt", new_cert.as_bytes()),
        ("tls.key", new_key.as_bytes()),
    ]);
    server
        .wait_for_metric("certificate_reloads_total{result=\"ok\"}", 1)
        .await;
    let mut client = H1::connect(server.https, &new_ca).await.unwrap();
    let reply = client
        .post_json("/mutate", &review_body("good", "web").to_string())
        .await
        .unwrap();
    assert_eq!(reply.json()["response"]["uid"], "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_are_served_in_plain_http() {
    let server = TestServer::start(|_| {}).await;
    let health = plain_get(server.plain, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        plain_get(server.plain, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    server.ready.store(true, Ordering::Release);
    assert_eq!(
        plain_get(server.plain, "/readyz").await.status,
        StatusCode::OK
    );
    server.ready.store(false, Ordering::Release);
    assert_eq!(
        plain_get(server.plain, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        plain_send(server.plain, Method::POST, "/healthz")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        plain_get(server.plain, "/mutate").await.status,
        StatusCode::NOT_FOUND
    );

    server.review("p1", "web").await;
    server.review("p2", "web").await;
    server.review("a", "allow-me").await;
    server.review("d", "deny-me").await;
    server
        .client()
        .await
        .post_json("/mutate", "{}")
        .await
        .unwrap();
    let metrics = plain_get(server.plain, "/metrics").await;
    assert!(
        metrics
            .headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    for (series, value) in [
        ("reviews_total{result=\"patched\"}", 2),
        ("reviews_total{result=\"allowed\"}", 1),
        ("reviews_total{result=\"denied\"}", 1),
        ("reviews_total{result=\"bad_request\"}", 1),
        ("reviews_total{result=\"error\"}", 0),
        ("review_duration_seconds_count", 5),
        ("review_duration_seconds_bucket{le=\"+Inf\"}", 5),
        ("in_flight_requests", 0),
    ] {
        assert_eq!(server.metric(series).await, value, "{series}");
    }
    let text = metrics.text();
    assert!(
        text.contains("# TYPE agent_boundary_webhook_review_duration_seconds histogram"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_listeners() {
    let mut server = TestServer::start(|_| {}).await;
    let mut idle = server.client().await;
    idle.post_json("/mutate", &review_body("before", "web").to_string())
        .await
        .unwrap();
    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(EVENTUALLY, server.task.take().unwrap())
        .await
        .expect("run did not return after shutdown")
        .unwrap();
    assert!(TcpStream::connect(server.https).await.is_err());
    assert!(TcpStream::connect(server.plain).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Shutdown: no review is refused while the pod is taken out of the Service.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_is_requested_readyz_fails_and_reviews_are_still_answered_for_the_delay() {
    // The delay is far longer than the few exchanges made during it.
    let mut server = TestServer::start(|c| c.shutdown_delay = Duration::from_secs(5)).await;
    server.ready.store(true, Ordering::Release);
    assert_eq!(
        plain_get(server.plain, "/readyz").await.status,
        StatusCode::OK
    );
    // Keep-alive connections opened before, as the apiserver keeps them.
    let mut h1 = server.client().await;
    assert_answered(
        &h1.post_json("/mutate", &review_body("h1-before", "web").to_string())
            .await
            .unwrap(),
        "h1-before",
    );
    let mut h2 = H2::connect(server.https, &server.ca).await;
    assert_answered(
        &h2.review("h2-before", "web").await.unwrap().unwrap(),
        "h2-before",
    );

    let _ = server.stop.take().unwrap().send(());
    let body = until_not_ready(server.plain).await;
    assert!(body.contains("shutting down"), "{body}");
    // Liveness is unaffected: the kubelet must not restart a pod that is shutting down.
    assert_eq!(
        plain_get(server.plain, "/healthz").await.status,
        StatusCode::OK
    );

    let during = h1
        .post_json("/mutate", &review_body("h1-during", "web").to_string())
        .await
        .unwrap();
    assert_answered(&during, "h1-during");
    assert!(during.headers.get("connection").is_none(), "{during:?}");
    assert_answered(&server.review("new-during", "web").await, "new-during");
    assert_answered(
        &h2.review("h2-during", "web").await.unwrap().unwrap(),
        "h2-during",
    );
    // Still /readyz 503 after those reviews: not a blip.
    assert_eq!(
        plain_get(server.plain, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let task = server.task.take().unwrap();
    assert!(!task.is_finished(), "run returned before the delay ended");

    // After the delay: both idle keep-alive connections are closed by the server (HTTP/2 with
    // GOAWAY: the client's connection ends without an error), the listeners are gone.
    let stopped = tokio::time::timeout(EVENTUALLY, task)
        .await
        .expect("run did not return after the delay")
        .unwrap();
    assert_eq!(stopped, Stopped::Drained);
    ended(&mut h1.connection).await.unwrap();
    ended(&mut h2.connection).await.unwrap();
    assert!(TcpStream::connect(server.https).await.is_err());
    assert!(TcpStream::connect(server.plain).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_in_flight_when_the_delay_ends_are_answered_and_idle_connections_closed() {
    let mut server = TestServer::start(|c| {
        c.shutdown_delay = Duration::from_millis(200);
        c.shutdown_grace = EVENTUALLY;
    })
    .await;
    let mut idle = server.client().await;
    assert_answered(
        &idle
            .post_json("/mutate", &review_body("idle", "web").to_string())
            .await
            .unwrap(),
        "idle",
    );
    // Two reviews the decider holds: over HTTP/1.1 and over HTTP/2.
    let mut h1 = server.client().await;
    let h1_held = tokio::spawn(async move {
        let reply = h1
            .post_json("/mutate", &review_body("h1-held", "held").to_string())
            .await;
        (h1, reply)
    });
    let mut h2 = H2::connect(server.https, &server.ca).await;
    let h2_held = h2.review("h2-held", "held");
    server.wait_for_metric("in_flight_requests", 2).await;

    let _ = server.stop.take().unwrap().send(());
    // The delay ends: the listener closes while both reviews are still held.
    until_refused(server.https).await;
    // An idle keep-alive connection is closed now, not when the held reviews end.
    ended(&mut idle.connection).await.unwrap();
    assert!(!h1_held.is_finished() && !h2_held.is_finished());
    server.held.add_permits(2);
    let (mut h1, h1_reply) = tokio::time::timeout(EVENTUALLY, h1_held)
        .await
        .expect("the held HTTP/1.1 review was not answered")
        .unwrap();
    let h1_reply = h1_reply.unwrap();
    assert_answered(&h1_reply, "h1-held");
    // The answer tells the client not to reuse the connection, and the server closes it.
    assert_eq!(
        h1_reply
            .headers
            .get("connection")
            .map(hyper::header::HeaderValue::as_bytes),
        Some(b"close".as_slice()),
        "{h1_reply:?}"
    );
    ended(&mut h1.connection).await.unwrap();
    let h2_reply = tokio::time::timeout(EVENTUALLY, h2_held)
        .await
        .expect("the held HTTP/2 review was not answered")
        .unwrap()
        .unwrap();
    assert_answered(&h2_reply, "h2-held");
    // The server ends the HTTP/2 connection (GOAWAY) once its last stream is answered.
    ended(&mut h2.connection).await.unwrap();
    let stopped = tokio::time::timeout(EVENTUALLY, server.task.take().unwrap())
        .await
        .expect("run did not return once the held reviews were answered")
        .unwrap();
    assert_eq!(stopped, Stopped::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_still_open_after_the_grace_are_dropped() {
    let mut server = TestServer::start(|c| c.shutdown_grace = Duration::from_millis(300)).await;
    let mut h1 = server.client().await;
    let held = tokio::spawn(async move {
        h1.post_json("/mutate", &review_body("never", "held").to_string())
            .await
    });
    server.wait_for_metric("in_flight_requests", 1).await;
    let _ = server.stop.take().unwrap().send(());
    let stopped = tokio::time::timeout(EVENTUALLY, server.task.take().unwrap())
        .await
        .expect("run did not return after the grace")
        .unwrap();
    assert_eq!(stopped, Stopped::GraceExceeded);
    // The client learns that the connection is gone instead of waiting for ever.
    let reply = tokio::time::timeout(EVENTUALLY, held)
        .await
        .expect("the dropped request's client was left waiting")
        .unwrap();
    assert!(reply.is_err(), "{reply:?}");
}

// ---------------------------------------------------------------------------------------------
// The real binary, stopped with real signals.

/// A stand-in for the Kubernetes API, just enough for `boundary-webhook` to start and become
/// ready: its version, an empty list of anything, and watches that stay open without events.
/// (Not an apiserver: the webhook's cluster view is tested against a real one in tests/cluster.)
async fn stand_in_apiserver() -> SocketAddr {
    use axum::response::IntoResponse;
    async fn answer(request: axum::extract::Request) -> axum::response::Response {
        let json = [("content-type", "application/json")];
        if request.uri().path() == "/version" {
            let version = json!({
                "major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitCommit": "",
                "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "gc",
                "platform": "linux/amd64",
            });
            return (json, version.to_string()).into_response();
        }
        let watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        if watch {
            let silence = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
            return (json, axum::body::Body::from_stream(silence)).into_response();
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []});
        (json, list.to_string()).into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(answer);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `boundary-webhook` as a process, with its log lines (JSON) collected.
struct Webhook {
    child: tokio::process::Child,
    https: SocketAddr,
    plain: SocketAddr,
    ca: TestCa,
    logs: Arc<std::sync::Mutex<Vec<Value>>>,
    /// The task collecting the log lines; it ends when the process's stderr does.
    reader: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Webhook {
    async fn start(shutdown_delay_seconds: u64) -> Webhook {
        use boundary_api::contract::webhook_env;
        let apiserver = stand_in_apiserver().await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
                 clusters: [{{name: test, cluster: {{server: 'http://{apiserver}'}}}}]\n\
                 users: [{{name: test, user: {{}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n"
            ),
        )
        .unwrap();
        let ca = TestCa::named("binary test CA");
        let (cert, key) = serving_pair(&ca);
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_boundary-webhook"))
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("BOUNDARY_WEBHOOK_HTTPS_ADDR", "127.0.0.1:0")
            .env("BOUNDARY_WEBHOOK_PLAIN_ADDR", "127.0.0.1:0")
            .env("BOUNDARY_WEBHOOK_CERT_FILE", dir.path().join("tls.crt"))
            .env("BOUNDARY_WEBHOOK_KEY_FILE", dir.path().join("tls.key"))
            .env("BOUNDARY_WEBHOOK_IMAGE", "jail-runtime:test")
            .env("BOUNDARY_WEBHOOK_REGISTRY_LOOKUP", "false")
            .env(boundary_api::contract::log_env::FORMAT, "json")
            .env(
                webhook_env::SHUTDOWN_DELAY_SECONDS,
                shutdown_delay_seconds.to_string(),
            )
            .env(webhook_env::SHUTDOWN_GRACE_SECONDS, "60")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (serving, mut addresses) = tokio::sync::mpsc::unbounded_channel();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = logs.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("webhook: {line}");
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                // One JSON object per line, the event's fields at the top level.
                if entry["message"] == "serving" {
                    let _ = serving.send(entry.clone());
                }
                collected.lock().unwrap().push(entry);
            }
        });
        let fields = tokio::time::timeout(EVENTUALLY, addresses.recv())
            .await
            .expect("the webhook did not log `serving`")
            .expect("the webhook ended before serving");
        let addr = |name: &str| fields[name].as_str().unwrap().parse().unwrap();
        Webhook {
            https: addr("https"),
            plain: addr("plain"),
            child,
            ca,
            logs,
            reader: Some(reader),
            _dir: dir,
        }
    }

    /// Sends `signal` (`TERM`, `INT`) to the process.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the webhook has exited").to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and for its last log lines to be collected (the reader
    /// may lag behind the exit).
    async fn exited(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(EVENTUALLY, self.child.wait())
            .await
            .expect("the webhook did not exit")
            .unwrap();
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(EVENTUALLY, reader)
                .await
                .expect("the webhook's stderr did not end after it exited")
                .expect("the log reader panicked");
        }
        status
    }

    async fn until_ready(&self) {
        let deadline = Instant::now() + EVENTUALLY;
        while plain_get(self.plain, "/readyz").await.status != StatusCode::OK {
            assert!(Instant::now() < deadline, "the webhook never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the first log line whose message contains `text`.
    fn logged(&self, text: &str) -> usize {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .position(|e| e["message"].as_str().is_some_and(|m| m.contains(text)))
            .unwrap_or_else(|| panic!("no log line says {text:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_answers_reviews_until_its_shutdown_delay_ends_after_sigterm_and_exits_0() {
    // The delay is far longer than the few exchanges made during it, and shorter than the
    // 10 s a request body may take (one is sent across the end of the delay).
    let mut webhook = Webhook::start(4).await;
    webhook.until_ready().await;
    let mut keep_alive = H1::connect(webhook.https, &webhook.ca).await.unwrap();
    assert_answered(
        &keep_alive
            .post_json("/mutate", &review_body("before", "web").to_string())
            .await
            .unwrap(),
        "before",
    );

    webhook.signal("TERM");
    let body = until_not_ready(webhook.plain).await;
    assert!(body.contains("shutting down"), "{body}");
    assert_answered(
        &keep_alive
            .post_json("/mutate", &review_body("kept", "web").to_string())
            .await
            .unwrap(),
        "kept",
    );
    let mut new = H1::connect(webhook.https, &webhook.ca).await.unwrap();
    assert_answered(
        &new.post_json("/mutate", &review_body("new", "web").to_string())
            .await
            .unwrap(),
        "new",
    );
    // A review whose body is half sent when the delay ends.
    let review = review_body("across", "web").to_string();
    let (first, rest) = review.as_bytes().split_at(review.len() / 2);
    let mut across = tls_connect(webhook.https, &webhook.ca, Alpn::Http1)
        .await
        .unwrap();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        review.len()
    );
    across.write_all(head.as_bytes()).await.unwrap();
    across.write_all(first).await.unwrap();
    across.flush().await.unwrap();
    assert!(
        webhook.child.try_wait().unwrap().is_none(),
        "exited during the delay"
    );

    until_refused(webhook.https).await;
    across.write_all(rest).await.unwrap();
    across.flush().await.unwrap();
    let mut answer = Vec::new();
    // The server closes the connection after the answer.
    tokio::time::timeout(EVENTUALLY, across.read_to_end(&mut answer))
        .await
        .expect("the review across the end of the delay was not answered")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "{answer}"
    );
    let reply: Value = serde_json::from_str(body).unwrap();
    assert_eq!(reply["response"]["uid"], "across", "{reply}");

    let status = webhook.exited().await;
    assert_eq!(status.code(), Some(0), "{status}");
    // Each phase is logged, in order.
    let phases = [
        "shutting down (signal again",
        "shutdown requested",
        "shutdown delay over",
        "every open request finished",
    ]
    .map(|p| webhook.logged(p));
    assert!(phases.is_sorted(), "{phases:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_makes_the_binary_exit_without_waiting_for_the_delay() {
    // A delay no test waits for.
    let mut webhook = Webhook::start(3600).await;
    webhook.until_ready().await;
    webhook.signal("TERM");
    until_not_ready(webhook.plain).await;
    assert_answered(&review_over(&webhook).await, "still");
    webhook.signal("INT");
    let status = webhook.exited().await;
    assert_eq!(status.code(), Some(130), "{status}");
    webhook.logged("second signal");
}

async fn review_over(webhook: &Webhook) -> Reply {
    H1::connect(webhook.https, &webhook.ca)
        .await
        .unwrap()
        .post_json("/mutate", &review_body("still", "web").to_string())
        .await
        .unwrap()
}

/// Every webhook metric the chart's alerts and Grafana dashboard use
/// (`charts/agent-boundary/templates/monitoring-prometheusrule.yaml`, `dashboards/*.json`) is on
/// the real binary's `/metrics` before its first review.
#[tokio::test]
async fn the_binary_exports_every_webhook_metric_the_chart_uses() {
    use boundary_test_kit::metric_names::{Exporter, unexported, used_by_chart};
    let webhook = Webhook::start(0).await;
    let exposition = plain_get(webhook.plain, "/metrics").await.text();
    let used = used_by_chart(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let missing = unexported(&used, Exporter::Webhook, &exposition);
    assert!(
        missing.is_empty(),
        "the chart uses webhook metrics the webhook does not export: {missing:?}\n{exposition}"
    );
    // The expiry is the served certificate's, not a placeholder.
    let expiry: i64 = exposition
        .lines()
        .find_map(|l| l.strip_prefix("agent_boundary_webhook_certificate_expiry_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no certificate expiry in\n{exposition}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        u64::try_from(expiry).unwrap() > now + 86_400,
        "expiry {expiry}, now {now}"
    );
}

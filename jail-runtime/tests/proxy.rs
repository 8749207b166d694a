//! The policy proxy with real clients and servers on loopback, through the sidecar's socket (the
//! path every jailed connection takes in a pod) and its explicit-proxy port: keep-alive with a
//! check per request, HTTP/2 on both sides, WebSocket, streamed bodies (SSE, 1 GiB) with flat
//! memory, trailers, 100-continue, consistency checks, bypass attempts, upstream failures,
//! passthrough and TCP rules, hostile input, metrics.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Sidecar, TestCa, TestServer};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

/// An upstream with the endpoints the tests need.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    uploaded: Arc<AtomicU64>,
    sse_gate: Arc<tokio::sync::Notify>,
}

impl Upstream {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let uploaded = Arc::new(AtomicU64::new(0));
        let sse_gate = Arc::new(tokio::sync::Notify::new());
        let (c, u, g) = (connections.clone(), uploaded.clone(), sse_gate.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (u, g, tls) = (u.clone(), g.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| route(req, u.clone(), g.clone()));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(config) => {
                            if let Ok(s) =
                                tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                            {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            connections,
            uploaded,
            sse_gate,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn route(
    mut req: Request<Incoming>,
    uploaded: Arc<AtomicU64>,
    gate: Arc<tokio::sync::Notify>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match path.as_str() {
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                }
            }
            uploaded.store(n, Ordering::SeqCst);
            Response::new(full(format!("got {n}")))
        }
        "/download" => {
            let total: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunk = Bytes::from(vec![7u8; 256 * 1024]);
            let stream = futures_util::stream::unfold(0u64, move |sent| {
                let chunk = chunk.clone();
                async move {
                    (sent < total).then(|| {
                        let n = (total - sent).min(chunk.len() as u64);
                        (
                            Ok::<_, Infallible>(Frame::data(
                                chunk.slice(..usize::try_from(n).unwrap()),
                            )),
                            sent + n,
                        )
                    })
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "/sse" => sse(gate),
        "/trailers" => with_trailers(),
        "/slow" => {
            tokio::time::sleep(Duration::from_hours(1)).await;
            Response::new(full("too late"))
        }
        "/ws" => websocket(&mut req),
        _ => {
            let host = req
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| req.uri().authority().map(ToString::to_string))
                .unwrap_or_default();
            Response::new(full(format!(
                "hello {} {} {} {:?}\n",
                req.method(),
                host,
                path,
                req.version()
            )))
        }
    })
}

fn sse(gate: Arc<tokio::sync::Notify>) -> Response<Body> {
    let stream = futures_util::stream::unfold(0, move |step| {
        let gate = gate.clone();
        async move {
            match step {
                0 => Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from("data: one\n\n"))),
                    1,
                )),
                1 => {
                    // The second event only after the client has seen the first.
                    gate.notified().await;
                    Some((Ok(Frame::data(Bytes::from("data: two\n\n"))), 2))
                }
                _ => None,
            }
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

fn with_trailers() -> Response<Body> {
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from("payload"))),
        Ok(Frame::trailers({
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            t
        })),
    ];
    Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
        frames,
    ))))
}

/// Accepts a WebSocket and echoes text messages.
fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .cloned()
        .unwrap_or(http::HeaderValue::from_static(""));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text()
                    && ws
                        .send(Message::text(format!("echo {}", msg.to_text().unwrap())))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

fn policy(allow: &[&str]) -> serde_json::Value {
    common::compiled(allow)
}

/// Sends one HTTP/1.1 request over an existing connection and returns (status, body).
async fn h1<S>(
    sender: &mut hyper::client::conn::http1::SendRequest<Body>,
    _io: std::marker::PhantomData<S>,
    method: &str,
    uri: &str,
    host: &str,
) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn every_request_on_a_keep_alive_connection_is_checked() {
    let up = Upstream::start(None).await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test path=/v1/*"]),
        &["allowed.test"],
        None,
        &[],
    )
    .await;
    let stream = sidecar.connect("allowed.test", up.port()).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let host = format!("allowed.test:{}", up.port());
    let p = std::marker::PhantomData::<()>;
    assert_eq!(h1(&mut sender, p, "GET", "/v1/a", &host).await.0, 200);
    let (status, body) = h1(&mut sender, p, "GET", "/admin", &host).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("domain=allowed.test method=GET path=/admin"),
        "the 403 names the rule that would allow it:\n{body}"
    );
    assert!(
        body.contains("path not allowed"),
        "and the rule that came close:\n{body}"
    );
    let (status, body) = h1(&mut sender, p, "GET", "/v1/b", &host).await;
    assert_eq!(status, 200, "the connection survives a denial: {body}");
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
    let records = sidecar.audit().await;
    let paths: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), r["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [("/v1/a", "allow"), ("/admin", "deny"), ("/v1/b", "allow")]
    );
}

#[tokio::test]
async fn http2_on_both_sides_with_trailers() {
    let ca = TestCa::new();
    let up = Upstream::start(Some(
        ca.server_config(&["allowed.test"], common::Alpn::H2AndHttp1),
    ))
    .await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test"]),
        &["allowed.test"],
        Some(&ca),
        &[],
    )
    .await;
    let stream = sidecar.connect("allowed.test", up.port()).await;
    let tls = sidecar
        .tls(true)
        .connect("allowed.test".try_into().unwrap(), stream)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "h2 with the client"
    );
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = format!("https://allowed.test:{}/hello", up.port());
    let resp = sender
        .send_request(Request::get(&uri).body(full("")).unwrap())
        .await
        .unwrap();
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert!(
        body.contains("HTTP/2.0"),
        "h2 with the upstream too: {body}"
    );
    let uri = format!("https://allowed.test:{}/trailers", up.port());
    let resp = sender
        .send_request(Request::get(&uri).body(full("")).unwrap())
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .unwrap(),
        "0",
        "trailers pass through"
    );
    assert_eq!(collected.to_bytes(), "payload");
}

#[tokio::test]
async fn websocket_after_an_allowed_upgrade_and_not_after_a_denied_one() {
    let up = Upstream::start(None).await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test path=/ws"]),
        &["allowed.test"],
        None,
        &[],
    )
    .await;
    let stream = sidecar.connect("allowed.test", up.port()).await;
    let url = format!("ws://allowed.test:{}/ws", up.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("echo ping {i}"));
    }
    let stream = sidecar.connect("allowed.test", up.port()).await;
    let url = format!("ws://allowed.test:{}/ws-other", up.port());
    let err = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
}

#[tokio::test]
async fn an_event_stream_reaches_the_client_as_it_is_produced() {
    let up = Upstream::start(None).await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test"]),
        &["allowed.test"],
        None,
        &[],
    )
    .await;
    let stream = sidecar.connect("allowed.test", up.port()).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/sse")
        .header("host", format!("allowed.test:{}", up.port()))
        .body(full(""))
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    // The upstream holds the second event until the first arrived here: a proxy that buffers
    // the response would never deliver the first one (the test would time out).
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first event streamed")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    up.sse_gate.notify_one();
    let second = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.into_data().unwrap(), "data: two\n\n");
}

#[tokio::test]
async fn a_gibibyte_each_way_streams_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let up = Upstream::start(None).await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test"]),
        &["allowed.test"],
        None,
        &[],
    )
    .await;
    let before = sidecar.peak_rss_kib();
    let stream = sidecar.connect("allowed.test", up.port()).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let host = format!("allowed.test:{}", up.port());
    let chunk = Bytes::from(vec![1u8; 256 * 1024]);
    let upload = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move { (sent < GIB).then(|| (Ok::<_, Infallible>(Frame::data(chunk)), sent + 256 * 1024)) }
    });
    let req = Request::post("/upload")
        .header("host", &host)
        .body(BodyExt::boxed(StreamBody::new(upload)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        format!("got {GIB}")
    );
    assert_eq!(up.uploaded.load(Ordering::SeqCst), GIB);
    let req = Request::get(format!("/download?n={GIB}"))
        .header("host", &host)
        .body(full(""))
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, GIB);
    let growth_mib = (sidecar.peak_rss_kib().saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 64,
        "peak memory grew by {growth_mib} MiB while relaying 2 GiB"
    );
    let records = sidecar.audit().await;
    assert_eq!(records[0]["bytes_in"], GIB, "{:?}", records[0]);
    assert_eq!(records[1]["bytes_out"], GIB, "{:?}", records[1]);
}

/// Writes raw bytes on a relayed connection and reads the answer until the peer closes or
/// `until` appears.
async fn raw(sidecar: &Sidecar, name: &str, port: u16, request: &[u8], until: &str) -> String {
    let mut stream = sidecar.connect(name, port).await;
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&out).contains(until) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let up = Upstream::start(None).await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test"]),
        &["allowed.test"],
        None,
        &[],
    )
    .await;
    let mut stream = sidecar.connect("allowed.test", up.port()).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: allowed.test:{}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        up.port()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream.write_all(b"hello").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("got 5"),
        "{text}"
    );
}

/// Reads until `until` has arrived `times` times, or the proxy closes (then `true`), or 10 s.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    until: &str,
    times: usize,
) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                if times > 0 && text.matches(until).count() >= times {
                    return (text.into_owned(), false);
                }
            }
        }
    }
}

/// Between requests the proxy gives back hyper's per-connection state (idle connections are
/// cheap); the stream must behave exactly as one long keep-alive connection would.
#[tokio::test]
async fn keep_alive_connections_behave_across_idle_periods_pipelining_and_closes() {
    let up = Upstream::start(None).await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test method=GET path=/v1/*"]),
        &["allowed.test"],
        None,
        &[],
    )
    .await;
    let host = format!("allowed.test:{}", up.port());
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
    };

    // Pipelined requests, one allowed and one denied, answered in order; then idle pauses.
    let mut stream = sidecar.connect("allowed.test", up.port()).await;
    stream
        .write_all(&[get("/v1/a", ""), get("/admin", ""), get("/v1/b", "")].concat())
        .await
        .unwrap();
    let (text, closed) = read_until(&mut stream, "HTTP/1.1 ", 3).await;
    assert!(!closed, "{text}");
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "403", "200"], "{text}");
    assert!(text.find("GET allowed.test").unwrap() < text.find("Blocked").unwrap());
    for pause in [10, 300, 1200] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        stream.write_all(&get("/v1/again", "")).await.unwrap();
        let (text, closed) = read_until(&mut stream, "/v1/again", 1).await;
        assert!(
            text.starts_with("HTTP/1.1 200") && !closed,
            "after {pause} ms: {text}"
        );
    }
    // A request split across writes with a pause inside its head.
    stream
        .write_all(b"GET /v1/split HTTP/1.1\r\nHo")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream
        .write_all(format!("st: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (text, _) = read_until(&mut stream, "/v1/split", 1).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // A denied request whose body looks like a request: the body is never taken for one.
    let smuggled = get("/v1/smuggled", "");
    let post = format!(
        "POST /v1/upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    );
    stream
        .write_all(&[post.into_bytes(), smuggled].concat())
        .await
        .unwrap();
    let (text, _) = read_until(&mut stream, "HTTP/1.1 403", 1).await;
    assert!(text.contains("method not allowed"), "{text}");
    let _ = stream.write_all(&get("/v1/after", "")).await;
    let (text, _) = read_until(&mut stream, "/v1/after", 1).await;
    assert!(!text.contains("smuggled"), "{text}");
    let records = sidecar.audit().await;
    assert!(
        records.iter().all(|r| r["path"] != "/v1/smuggled"),
        "{records:#?}"
    );

    // The client asks to close: the proxy closes after the response.
    let mut stream = sidecar.connect("allowed.test", up.port()).await;
    stream
        .write_all(&get("/v1/bye", "Connection: close\r\n"))
        .await
        .unwrap();
    let (text, closed) = read_until(&mut stream, "", 0).await;
    assert!(text.starts_with("HTTP/1.1 200") && closed, "{text}");

    // HTTP/1.0 without keep-alive: the response ends with the connection.
    let mut stream = sidecar.connect("allowed.test", up.port()).await;
    stream
        .write_all(format!("GET /v1/old HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (text, closed) = read_until(&mut stream, "", 0).await;
    assert!(
        text.starts_with("HTTP/1.0 200") && text.contains("GET allowed.test") && closed,
        "{text}"
    );
}

#[tokio::test]
async fn inconsistent_requests_and_bypass_attempts_are_refused() {
    let ca = TestCa::new();
    let plain = Upstream::start(None).await;
    let tls_up = Upstream::start(Some(
        ca.server_config(&["allowed.test", "evil.test"], common::Alpn::Http1),
    ))
    .await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test path=/api/*", "domain=*.github.test"]),
        &["allowed.test", "evil.test"],
        Some(&ca),
        &[],
    )
    .await;
    let p = plain.port();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "absolute-form target differs from Host",
            format!("GET http://evil.test:{p}/api/x HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n"),
            "allowed.test",
            "HTTP/1.1 403",
        ),
        (
            "Host differs from the connection's name (fronting)",
            format!("GET /api/x HTTP/1.1\r\nHost: evil.test:{p}\r\n\r\n"),
            "allowed.test",
            "HTTP/1.1 403",
        ),
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /api/x HTTP/1.1\r\nHost: allowed.test:{p}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            "allowed.test",
            "HTTP/1.1 400",
        ),
        (
            "percent-encoded dot-segments",
            format!("GET /api/%2e%2e/admin HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n"),
            "allowed.test",
            "HTTP/1.1 403",
        ),
        (
            "backslash traversal",
            format!("GET /api\\..\\admin HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n"),
            "allowed.test",
            "HTTP/1.1 403",
        ),
        (
            "lookalike of a wildcard",
            format!("GET / HTTP/1.1\r\nHost: evilgithub.test:{p}\r\n\r\n"),
            "evilgithub.test",
            "HTTP/1.1 403",
        ),
        (
            "two Host headers",
            format!("GET /api/x HTTP/1.1\r\nHost: allowed.test:{p}\r\nHost: evil.test:{p}\r\n\r\n"),
            "allowed.test",
            "HTTP/1.1 400",
        ),
    ];
    for (what, request, name, expected) in &cases {
        let answer = raw(&sidecar, name, p, request.as_bytes(), "\r\n\r\n").await;
        assert!(answer.starts_with(expected), "{what}: {answer}");
    }
    // Case and a trailing dot do not get around a rule, and are still allowed.
    let ok = raw(
        &sidecar,
        "ALLOWED.TEST.",
        p,
        format!("GET /api/x HTTP/1.1\r\nHost: ALLOWED.TEST.:{p}\r\n\r\n").as_bytes(),
        "\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // An IP literal target is denied unless a rule allows that address.
    let ip = raw_ip(
        &sidecar,
        p,
        format!("GET /api/x HTTP/1.1\r\nHost: 192.0.2.1:{p}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(ip.starts_with("HTTP/1.1 403"), "{ip}");
    // TLS: SNI allowed, Host not (domain fronting inside TLS).
    let stream = sidecar.connect("allowed.test", tls_up.port()).await;
    let tls = sidecar
        .tls(false)
        .connect("allowed.test".try_into().unwrap(), stream)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (status, body) = h1(
        &mut sender,
        std::marker::PhantomData::<()>,
        "GET",
        "/api/x",
        &format!("evil.test:{}", tls_up.port()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Host evil.test differs from"), "{body}");
    // SNI naming another host than the connection's name.
    let stream = sidecar.connect("allowed.test", tls_up.port()).await;
    assert!(
        sidecar
            .tls(false)
            .connect("evil.test".try_into().unwrap(), stream)
            .await
            .is_err(),
        "SNI ≠ connection name is refused"
    );
    assert_eq!(
        plain.connections.load(Ordering::SeqCst),
        1,
        "only the allowed request reached the upstream"
    );
}

async fn raw_ip(sidecar: &Sidecar, port: u16, request: &[u8]) -> String {
    // Not loopback: that is the pod's own, decided by podLocal rules (see below).
    let mut stream = sidecar.connect_ip("192.0.2.1", port).await;
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_explicit_proxy_serves_connect_and_refuses_hosts_no_rule_allows() {
    let ca = TestCa::new();
    let up = Upstream::start(Some(
        ca.server_config(&["allowed.test"], common::Alpn::Http1),
    ))
    .await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test"]),
        &["allowed.test"],
        Some(&ca),
        &[],
    )
    .await;
    let curl = |url: String| {
        let mut args = sidecar.curl_through();
        args.extend(["-m".into(), "10".into(), url]);
        async move {
            let out = common::curl(&args, "").await;
            format!("{}{}", out.body, out.stderr)
        }
    };
    let ok = curl(format!("https://allowed.test:{}/x", up.port())).await;
    assert!(ok.contains("hello GET allowed.test"), "{ok}");
    let denied = curl(format!("https://denied.test:{}/x", up.port())).await;
    assert!(
        denied.contains("403"),
        "CONNECT to a host no rule allows: {denied}"
    );
}

#[tokio::test]
async fn upstream_failures_are_502_and_504_with_a_reason() {
    let up = Upstream::start(None).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test", "domain=nowhere.test"]),
        &["allowed.test"],
        None,
        &["--upstream-timeout", "1"],
    )
    .await;
    let refused = raw(
        &sidecar,
        "allowed.test",
        closed,
        format!("GET / HTTP/1.1\r\nHost: allowed.test:{closed}\r\n\r\n").as_bytes(),
        "\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    let slow = raw(
        &sidecar,
        "allowed.test",
        up.port(),
        format!(
            "GET /slow HTTP/1.1\r\nHost: allowed.test:{}\r\n\r\n",
            up.port()
        )
        .as_bytes(),
        "within",
    )
    .await;
    assert!(
        slow.starts_with("HTTP/1.1 504") && slow.contains("no response within 1 s"),
        "{slow}"
    );
    let unresolvable = raw(
        &sidecar,
        "nowhere.test",
        80,
        b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
        "\r\n\r\n",
    )
    .await;
    assert!(unresolvable.starts_with("HTTP/1.1 502"), "{unresolvable}");
    let metrics = reqwest_metrics(&sidecar).await;
    assert!(
        metrics.contains("agent_boundary_upstream_errors_total{kind=\"connect\"} 1"),
        "{metrics}"
    );
}

async fn reqwest_metrics(sidecar: &Sidecar) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", &format!("http://{}/metrics", sidecar.metrics)])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn passthrough_and_tcp_rules_relay_without_looking_inside() {
    let ca = TestCa::new();
    let pinned = Upstream::start(Some(
        ca.server_config(&["pinned.test"], common::Alpn::Http1),
    ))
    .await;
    // A server that speaks first, like ssh.
    let banner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let banner_port = banner.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = banner.accept().await {
            let _ = s.write_all(b"SSH-2.0-test\r\n").await;
        }
    });
    let policy = serde_json::json!({
        "version": 1,
        "policies": [{
            "name": "p",
            "http": [{"domains": ["pinned.test"], "tls": "Passthrough"}],
            "tcp": [{"domain": "git.test", "ports": [banner_port]}]
        }]
    });
    let sidecar = Sidecar::for_upstream(&policy, &["pinned.test", "git.test"], None, &[]).await;
    // Passthrough: the client sees the upstream's own certificate (issued by the test CA).
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca.pem_path).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let stream = sidecar.connect("pinned.test", pinned.port()).await;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("pinned.test".try_into().unwrap(), stream)
        .await;
    assert!(
        tls.is_ok(),
        "the upstream's certificate reached the client: {tls:?}"
    );
    // TCP rule: the server's banner arrives without the client sending anything.
    let mut stream = sidecar.connect("git.test", banner_port).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"SSH-2.0-test\r\n");
    // Relayed connections are audited when they end, with their byte counts.
    drop((tls, stream));
    let records = sidecar.audit().await;
    let schemes: Vec<&str> = records
        .iter()
        .map(|r| r["scheme"].as_str().unwrap())
        .collect();
    assert!(
        schemes.contains(&"tls") && schemes.contains(&"tcp"),
        "{records:?}"
    );
}

#[tokio::test]
async fn hostile_input_gets_errors_and_the_proxy_stays_up() {
    let up = Upstream::start(None).await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test"]),
        &["allowed.test"],
        None,
        &[],
    )
    .await;
    let p = up.port();
    let garbage: Vec<Vec<u8>> = vec![
        vec![0u8; 100],
        b"\x16\x03\x01\xff\xff".to_vec(),
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00".to_vec(),
        format!(
            "GET / HTTP/1.1\r\nHost: allowed.test:{p}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(200_000)
        )
        .into_bytes(),
        format!("GET /\x00 HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n").into_bytes(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x07\x00\x00\x00\x00\x00garbage".to_vec(),
    ];
    for bytes in &garbage {
        let _ = raw(&sidecar, "allowed.test", p, bytes, "\r\n\r\n").await;
    }
    // A slow client that never finishes its head is not kept forever (header read timeout).
    let mut slow = sidecar.connect("allowed.test", p).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: all")
        .await
        .unwrap();
    let ok = raw(
        &sidecar,
        "allowed.test",
        p,
        format!("GET /still-up HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n").as_bytes(),
        "HTTP",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(sidecar.pid), None).is_ok(),
        "the sidecar survived"
    );
}

#[tokio::test]
async fn metrics_count_decisions_bytes_and_connections() {
    let up = Upstream::start(None).await;
    let sidecar = Sidecar::for_upstream(
        &policy(&["domain=allowed.test path=/ok"]),
        &["allowed.test"],
        None,
        &[],
    )
    .await;
    let p = up.port();
    let _ = raw(
        &sidecar,
        "allowed.test",
        p,
        format!("GET /ok HTTP/1.1\r\nHost: allowed.test:{p}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        "\r\n\r\n",
    )
    .await;
    let _ = raw(
        &sidecar,
        "allowed.test",
        p,
        format!("GET /no HTTP/1.1\r\nHost: allowed.test:{p}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        "\r\n\r\n",
    )
    .await;
    let held = sidecar.connect("allowed.test", p).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = reqwest_metrics(&sidecar).await;
    assert!(
        text.contains("agent_boundary_decisions_total{kind=\"http\",decision=\"allow\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("agent_boundary_decisions_total{kind=\"http\",decision=\"deny\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("agent_boundary_active_connections 1"),
        "{text}"
    );
    assert!(
        !text.contains("agent_boundary_bytes_total{direction=\"to_client\"} 0"),
        "{text}"
    );
    drop(held);
    let health = tokio::process::Command::new("curl")
        .args(["-sS", &format!("http://{}/healthz", sidecar.metrics)])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
    let _ = Empty::<Bytes>::new();
}

/// A pod's sidecar on loopback: says `ready` first (server-first, like a database), then echoes.
async fn echo_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                if wr.write_all(b"ready\n").await.is_ok() {
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                }
            });
        }
    });
    (port, connections)
}

#[tokio::test]
async fn pod_local_ports_are_relayed_raw_when_a_pod_local_rule_allows_them() {
    let (allowed, allowed_hits) = echo_server().await;
    let (other, other_hits) = echo_server().await;
    let policy = serde_json::json!({
        "version": 1,
        "policies": [{
            "name": "p",
            "podSelector": {},
            // A host rule for loopback addresses does not open the pod's loopback.
            "allow": ["domain=127.0.0.0/8"],
            "podLocal": [{"ports": [allowed], "description": "echo"}]
        }]
    });
    let sidecar = Sidecar::start(&policy, &[]).await;

    // Allowed: the server speaks first, and bytes that look like TLS are not intercepted.
    let mut stream = sidecar.connect_ip("127.0.0.1", allowed).await;
    let (banner, _) = read_until(&mut stream, "ready\n", 1).await;
    assert_eq!(banner, "ready\n");
    let hello = b"\x16\x03\x01\x00\x05hello";
    stream.write_all(hello).await.unwrap();
    let mut echoed = vec![0u8; hello.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, hello, "relayed byte for byte");
    drop(stream);

    // Not allowed: closed before the pod's server sees a connection.
    let mut stream = sidecar.connect_ip("127.0.0.1", other).await;
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let (text, closed) = read_until(&mut stream, "", 0).await;
    assert!(text.is_empty() && closed, "{text:?}");
    assert_eq!(other_hits.load(Ordering::SeqCst), 0);

    // The explicit proxy (landlock tier) reaches the same ports by CONNECT, with the same rules.
    let connect = |port: u16, until: &'static str| {
        let addr = sidecar.explicit;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            read_until(&mut s, until, 1).await.0
        }
    };
    let tunnel = connect(allowed, "ready\n").await;
    assert!(
        tunnel.starts_with("HTTP/1.1 200") && tunnel.ends_with("ready\n"),
        "{tunnel:?}"
    );
    let refused = connect(other, "spec.podLocal").await;
    assert!(
        refused.starts_with("HTTP/1.1 403") && refused.contains("spec.podLocal"),
        "{refused}"
    );
    assert_eq!(other_hits.load(Ordering::SeqCst), 0);
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 2);

    let records = sidecar.audit().await;
    let pod_local: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["scheme"] == "pod-local")
        .collect();
    let allow = pod_local
        .iter()
        .find(|r| r["decision"] == "allow" && r["method"].is_null())
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(allow["host"], "127.0.0.1");
    assert_eq!(allow["port"], allowed);
    assert_eq!(
        allow["rule"],
        format!("p spec.podLocal[0]: podLocal ports={allowed} (echo)")
    );
    assert_eq!(allow["bytes_in"], hello.len());
    assert_eq!(allow["bytes_out"], 6 + hello.len());
    assert!(allow["duration_ms"].is_u64());
    let denied: Vec<&&serde_json::Value> = pod_local
        .iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 2, "{pod_local:?}");
    for r in denied {
        assert_eq!(r["port"], other);
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("spec.podLocal: [{{ports: [{other}]}}]")),
            "{reason}"
        );
    }
    let metrics = reqwest_metrics(&sidecar).await;
    assert!(
        metrics.contains("agent_boundary_decisions_total{kind=\"pod-local\",decision=\"deny\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn pod_local_ports_in_audit_mode_are_relayed_and_recorded_as_would_be_denials() {
    let (port, hits) = echo_server().await;
    let policy = serde_json::json!({
        "version": 1,
        "policies": [{"name": "rollout", "podSelector": {}, "mode": "Audit"}]
    });
    let sidecar = Sidecar::start(&policy, &[]).await;
    let mut stream = sidecar.connect_ip("127.0.0.1", port).await;
    let (banner, _) = read_until(&mut stream, "ready\n", 1).await;
    assert_eq!(banner, "ready\n");
    drop(stream);
    // The jail's own ports are never the pod's, not even in Audit mode.
    let mut stream = sidecar.connect_ip("127.0.0.1", 53).await;
    let (text, closed) = read_until(&mut stream, "", 0).await;
    assert!(text.is_empty() && closed, "{text:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let records = sidecar.audit().await;
    let would: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["scheme"] == "pod-local" && r["decision"] == "would-deny")
        .collect();
    assert_eq!(would.len(), 1, "{records:?}");
    assert_eq!(would[0]["port"], port);
    assert_eq!(would[0]["mode"], "Audit");
    assert_eq!(would[0]["bytes_out"], 6);
    assert!(
        would[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("spec.podLocal: [{{ports: [{port}]}}]")),
        "{would:?}"
    );
    let dns = records
        .iter()
        .find(|r| r["scheme"] == "pod-local" && r["port"] == 53)
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(dns["decision"], "deny");
}

#[tokio::test]
async fn explicit_proxy_requests_for_the_pods_loopback_follow_pod_local_rules() {
    let allowed = Upstream::start(None).await;
    let other = Upstream::start(None).await;
    let policy = serde_json::json!({
        "version": 1,
        "policies": [{
            "name": "p",
            "podSelector": {},
            "allow": ["domain=127.0.0.0/8", "domain=localhost"],
            "podLocal": [{"ports": [allowed.port()], "description": "mcp"}]
        }]
    });
    let sidecar = Sidecar::start(&policy, &[]).await;
    let curl = |url: String| {
        let proxy = format!("http://{}", sidecar.explicit);
        async move {
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "-m", "10", "-x", &proxy, &url])
                .output()
                .await
                .unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
    };
    let ok = curl(format!("http://127.0.0.1:{}/tools", allowed.port())).await;
    assert!(
        ok.contains(&format!("hello GET 127.0.0.1:{} /tools", allowed.port())),
        "{ok}"
    );
    let denied = curl(format!("http://127.0.0.1:{}/tools", other.port())).await;
    assert!(
        denied.contains("spec.podLocal") && denied.contains(&other.port().to_string()),
        "a host rule for 127.0.0.0/8 does not open the pod's loopback: {denied}"
    );
    // A name that resolves to loopback is no way round either.
    let by_name = curl(format!("http://localhost:{}/tools", other.port())).await;
    assert!(by_name.contains("podLocal"), "{by_name}");
    assert_eq!(other.connections.load(Ordering::SeqCst), 0);
    let records = sidecar.audit().await;
    let allow = records
        .iter()
        .find(|r| r["scheme"] == "pod-local" && r["decision"] == "allow")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(allow["method"], "GET");
    assert_eq!(allow["path"], "/tools");
    assert_eq!(allow["status"], 200);
    assert!(
        records
            .iter()
            .any(|r| r["scheme"] == "pod-local" && r["decision"] == "deny" && r["status"] == 403),
        "{records:?}"
    );
}

/// curl uploading `file` to `url` with `args` (a proxy, a CA, an HTTP version): `(curl's exit
/// code, status, body and curl's errors)`.
async fn curl_upload(args: &[&str], file: &std::path::Path, url: &str) -> (i32, u16, String) {
    let data = format!("@{}", file.display());
    let mut all = vec!["-m", "20", "--data-binary", &data, url];
    all.extend(args);
    let out = common::curl(&all, "%{http_code}").await;
    let status = out.written.parse().unwrap_or(0);
    (out.code, status, format!("{}{}", out.body, out.stderr))
}

/// An upstream answering 413 at once to any request; `then_read`: it reads the body afterwards
/// (nginx's lingering close, Go's server), else it closes with the body unread (hyper's server:
/// a TCP reset, possibly while the upload is still being sent).
async fn answering_early(ca: &TestCa, then_read: bool) -> TestServer {
    TestServer::serving(
        Some(ca.server_config(&["upload.test"], common::Alpn::H2AndHttp1)),
        move |request: Request<Incoming>| async move {
            if then_read {
                tokio::spawn(request.into_body().collect());
            }
            Response::builder()
                .status(413)
                .body(full("too large\n"))
                .unwrap()
        },
    )
    .await
}

#[tokio::test]
async fn an_upload_answered_before_it_is_read_reaches_the_client_whole() {
    // Servers answer an upload before reading it (413, 401, a redirect); the proxy answers a
    // denied upload with its 403 page without reading it. Either way the client must get the
    // whole answer, as it does from the server directly, not a 502 or a reset it fails on
    // (curl 7.88: error 92 over HTTP/2), and the proxy must stay usable.
    let ca = TestCa::new();
    let (lingering, resetting) = (
        answering_early(&ca, true).await,
        answering_early(&ca, false).await,
    );
    let sidecar = put_only_sidecar(Some(&ca)).await;
    let dir = common::TempDir::new("early-answers");
    let proxy_ca = sidecar.ca_file();
    let upload = dir.path().join("upload");
    std::fs::write(&upload, vec![7u8; 32 << 20]).unwrap();
    let (proxy, server_ca) = (
        format!("http://{}", sidecar.explicit),
        ca.pem_path.to_str().unwrap().to_owned(),
    );
    for version in ["--http1.1", "--http2"] {
        let through = [
            "-x",
            &proxy,
            "--cacert",
            proxy_ca.to_str().unwrap(),
            version,
        ];
        for round in 0..3 {
            for (server, kind) in [(&lingering, "lingering"), (&resetting, "resetting")] {
                let url = format!("https://upload.test:{}/put", server.port());
                let resolve = format!("upload.test:{}:127.0.0.1", server.port());
                // The same upload directly, for comparison in a failure's message: curl gets
                // the answer over HTTP/1.1, while over HTTP/2 the server's reset of the stream
                // fails it (error 92), which the proxy spares it.
                let direct = ["--resolve", &resolve, "--cacert", &server_ca, version];
                let (code, status, body) = curl_upload(&direct, &upload, &url).await;
                let direct = format!("directly: curl exit {code}, status {status}: {body}");
                let (code, status, body) = curl_upload(&through, &upload, &url).await;
                assert_eq!(
                    (code, status),
                    (0, 413),
                    "proxied {version} {kind} {round}: {body}\n{direct}"
                );
                assert_eq!(body, "too large\n");
            }
            let url = format!("https://upload.test:{}/elsewhere", lingering.port());
            let (code, status, body) = curl_upload(&through, &upload, &url).await;
            assert_eq!((code, status), (0, 403), "denied {version} {round}: {body}");
            assert!(body.contains("Blocked by Agent Boundary"), "{body}");
        }
    }
    let small = dir.path().join("small");
    std::fs::write(&small, "x").unwrap();
    let url = format!("https://upload.test:{}/put", resetting.port());
    let through = [
        "-x",
        &proxy,
        "--cacert",
        proxy_ca.to_str().unwrap(),
        "--http2",
    ];
    assert_eq!(
        curl_upload(&through, &small, &url).await.1,
        413,
        "the proxy is still usable"
    );
}

/// A sidecar that allows only `upload.test`'s `/put` (`ca`: the upstream's, for HTTPS).
async fn put_only_sidecar(ca: Option<&TestCa>) -> Sidecar {
    Sidecar::for_upstream(
        &policy(&["domain=upload.test path=/put"]),
        &["upload.test"],
        ca,
        &[],
    )
    .await
}

/// A plain upstream for `upload.test` and a sidecar that allows only its `/put`.
async fn put_only() -> (TestServer, Sidecar) {
    let up = TestServer::start(None).await;
    let sidecar = put_only_sidecar(None).await;
    (up, sidecar)
}

#[tokio::test]
async fn a_denied_upload_waiting_for_100_continue_is_not_asked_for_and_the_next_request_is_answered()
 {
    // RFC 9110 §10.1.1: after a final answer, a client that asked for 100-continue need not send
    // its body. Reading it anyway would take the client's next request for body bytes.
    let (up, sidecar) = put_only().await;
    let host = format!("upload.test:{}", up.port());
    let mut stream = sidecar.connect("upload.test", up.port()).await;
    let upload = format!(
        "POST /elsewhere HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1048576\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    stream.write_all(upload.as_bytes()).await.unwrap();
    let (answer, _) = read_until(&mut stream, "Blocked by Agent Boundary", 1).await;
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "a 403 and no 100 Continue: {answer}"
    );
    let next = format!("GET /put HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let _ = stream.write_all(next.as_bytes()).await;
    // Answered, or the connection closed at once; not held while the request is read as body.
    let (next, closed) = tokio::time::timeout(
        Duration::from_secs(5),
        read_until(&mut stream, "hello GET", 1),
    )
    .await
    .expect("the next request was taken for the body: no answer and no close");
    assert!(
        next.contains("hello GET upload.test /put") || closed,
        "{next:?}"
    );
}

#[tokio::test]
async fn an_upload_told_to_continue_and_answered_early_is_read_to_its_end() {
    // A client that expected 100-continue and got it is sending its body; when the upstream then
    // answers before reading it all, the proxy must read the rest as for any early answer. Closing
    // instead failed the client's send (curl over HTTP/1.1: error 55, "Broken pipe") before it
    // read the answer, whenever the proxy had started forwarding the body first.
    let up = TestServer::serving(None, |request: Request<Incoming>| async move {
        // The proxy has forwarded some of the body, so it has told its client to continue.
        let mut body = request.into_body();
        let _ = body.frame().await;
        Response::builder()
            .status(413)
            .body(full("too large\n"))
            .unwrap()
    })
    .await;
    let sidecar = put_only_sidecar(None).await;
    let length = 32usize << 20;
    for round in 0..3 {
        let mut stream = sidecar.connect("upload.test", up.port()).await;
        let head = format!(
            "POST /put HTTP/1.1\r\nHost: upload.test:{}\r\nContent-Length: {length}\r\n\
             Expect: 100-continue\r\n\r\n",
            up.port()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (told, _) = read_until(&mut stream, "\r\n\r\n", 1).await;
        assert!(told.starts_with("HTTP/1.1 100 Continue"), "{round}: {told}");
        let (mut reading, mut writing) = tokio::io::split(stream);
        let answer = tokio::spawn(async move {
            let mut answer = Vec::new();
            let _ = reading.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        });
        let chunk = vec![7u8; 1 << 20];
        let mut sent = 0;
        while sent < length {
            if let Err(e) = writing.write_all(&chunk).await {
                panic!("{round}: the proxy stopped reading after {sent} of {length} bytes: {e}");
            }
            sent += chunk.len();
        }
        writing.shutdown().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(20), answer)
            .await
            .expect("the answer ends")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{round}: {answer}");
        assert!(answer.ends_with("too large\n"), "{round}: {answer}");
    }
}

#[tokio::test]
async fn a_denied_upload_that_never_ends_is_not_read_for_ever() {
    // The rest of a denied body is read and thrown away so that the client gets its 403 whole,
    // but only for a while: a client that stops sending mid-body is then cut off.
    let (up, sidecar) = put_only().await;
    let host = format!("upload.test:{}", up.port());
    let mut stream = sidecar.connect("upload.test", up.port()).await;
    let upload = format!(
        "POST /elsewhere HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1073741824\r\n\r\nsome of it"
    );
    stream.write_all(upload.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // Ended (a close or a reset) once the proxy gave up the body; not still open.
    let _ = tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy stopped reading the body and closed the connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}

#[tokio::test]
async fn a_denied_upload_is_not_read_past_its_bound() {
    let (up, sidecar) = put_only().await;
    let host = format!("upload.test:{}", up.port());
    let mut stream = sidecar.connect("upload.test", up.port()).await;
    let head =
        format!("POST /elsewhere HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1073741824\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..1024 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        sent += 1;
    }
    assert!(
        sent < 1024,
        "the proxy read the whole 1 GiB of a denied upload ({sent} MiB)"
    );
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "after {sent} MiB: {answer}"
    );
}

//! The kit against itself: real TLS handshakes and real HTTP/1.1 and h2 exchanges on loopback.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use boundary_test_kit::{
    Alpn, Reply, TestCa, TestServer, free_port, tls_connector, wait_port, wait_port_within,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

type Stream = Box<dyn Io>;
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// `GET path` over HTTP/1.1 with `host`; the body.
async fn get_h1(stream: Stream, host: &str, path: &str) -> String {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// `GET uri` over h2; the body.
async fn get_h2(stream: Stream, uri: &str) -> String {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_tls_upstream_echoes_http1_and_h2_requests_to_clients_trusting_its_ca() {
    let ca = TestCa::new();
    let server =
        TestServer::start(Some(ca.server_config(&["upstream.test"], Alpn::H2AndHttp1))).await;

    let stream = tls(server.addr, &ca.connector(Alpn::Http1), "upstream.test")
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );
    let body = get_h1(Box::new(stream), "upstream.test:443", "/x").await;
    assert_eq!(body, "hello GET upstream.test:443 /x HTTP/1.1\n");

    let stream = tls(server.addr, &ca.connector(Alpn::H2), "upstream.test")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let body = get_h2(Box::new(stream), "https://upstream.test/y").await;
    assert_eq!(body, "hello GET upstream.test /y HTTP/2.0\n");

    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_http1_only_upstream_refuses_h2_only_clients() {
    let ca = TestCa::new();
    let server = TestServer::start(Some(ca.server_config(&["upstream.test"], Alpn::Http1))).await;
    let refused = tls(server.addr, &ca.connector(Alpn::H2), "upstream.test").await;
    assert!(refused.is_err(), "no common application protocol");
}

#[tokio::test]
async fn clients_refuse_another_cas_certificate_and_names_not_in_it() {
    let ca = TestCa::named("upstream CA");
    let other = TestCa::named("another CA");
    let server = TestServer::start(Some(ca.server_config(&["upstream.test"], Alpn::Http1))).await;
    let error = tls(server.addr, &other.connector(Alpn::Http1), "upstream.test")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    let error = tls(server.addr, &ca.connector(Alpn::Http1), "elsewhere.test")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not valid for name"), "{error}");
}

#[tokio::test]
async fn leaf_certificates_cover_ip_addresses() {
    let ca = TestCa::new();
    let server = TestServer::start(Some(
        ca.server_config(&["localhost", "127.0.0.1"], Alpn::Http1),
    ))
    .await;
    for name in ["127.0.0.1", "localhost"] {
        let stream = tls(server.addr, &ca.connector(Alpn::Http1), name).await;
        assert!(stream.is_ok(), "{name}: {:?}", stream.err());
    }
    let leaf = ca.leaf(&["a.test"]);
    assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[tokio::test]
async fn a_plain_upstream_answers_its_fixed_reply_over_http1_and_h2_prior_knowledge() {
    let server = TestServer::answering(None, Reply::Fixed(Bytes::from_static(b"ok"))).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        get_h1(Box::new(stream), "upstream.test", "/small").await,
        "ok"
    );
    let stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        get_h2(Box::new(stream), "http://upstream.test/small").await,
        "ok"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bulk_streams_exactly_the_bytes_asked_for() {
    let server = TestServer::answering(None, Reply::Fixed(Bytes::from_static(b"ok"))).await;
    for n in [0u64, 1, 256 * 1024, 600_001] {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let body = get_h1(Box::new(stream), "upstream.test", &format!("/bulk?n={n}")).await;
        assert_eq!(body.len() as u64, n);
        assert!(body.bytes().all(|b| b == b'7'));
    }
}

#[test]
fn the_ca_pem_file_is_readable_by_every_user_and_goes_with_the_ca() {
    let ca = TestCa::new();
    assert_eq!(std::fs::read_to_string(&ca.pem_path).unwrap(), ca.pem);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca.pem_path), 0o644);
    assert_eq!(mode(ca.pem_path.parent().unwrap()), 0o755);
    let path = ca.pem_path.clone();
    drop(ca);
    assert!(!path.exists());
}

#[test]
fn a_connector_needs_a_ca_certificate() {
    let Err(error) = tls_connector("not a certificate", Alpn::Http1) else {
        panic!("a connector trusting nothing");
    };
    assert!(error.to_string().contains("no CA certificate"), "{error}");
    let two = format!("{}{}", TestCa::new().pem, TestCa::new().pem);
    assert!(tls_connector(&two, Alpn::Http1).is_ok());
}

#[tokio::test]
async fn wait_port_sees_a_listener_and_reports_a_missing_one() {
    let server = TestServer::start(None).await;
    wait_port(server.addr, "the echo server").await.unwrap();
    let nothing = free_port().unwrap();
    let error = wait_port_within(nothing, "nothing", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("nothing did not start listening on {nothing}")),
        "{error}"
    );
}

#[tokio::test]
async fn a_dropped_server_stops_accepting() {
    let server = TestServer::start(None).await;
    let addr = server.addr;
    drop(server);
    tokio::task::yield_now().await;
    let error = wait_port_within(addr, "the dropped server", Duration::from_millis(500)).await;
    assert!(error.is_err(), "still accepting on {addr}");
}

#[tokio::test]
async fn a_server_with_its_own_handler_keeps_tls_protocols_and_counters() {
    let ca = TestCa::new();
    let server = TestServer::serving(
        Some(ca.server_config(&["upstream.test"], Alpn::H2AndHttp1)),
        |request: Request<hyper::body::Incoming>| async move {
            let status = if request.uri().path() == "/teapot" {
                418
            } else {
                404
            };
            hyper::Response::builder()
                .status(status)
                .body(http_body_util::Full::new(Bytes::from_static(
                    b"short and stout",
                )))
                .unwrap()
        },
    )
    .await;
    let stream = tls(server.addr, &ca.connector(Alpn::H2), "upstream.test")
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for (path, status) in [("/teapot", 418), ("/other", 404)] {
        let request = Request::get(format!("https://upstream.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), status);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "short and stout");
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

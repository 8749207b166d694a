//! The private-address guard with a real DNS server: the proxy in-process asks a small UDP DNS
//! server of this test (`upstream_dns`, as `--upstream-dns` sets it) whose answers the test
//! chooses and changes (TTL 0), so DNS rebinding is played for real: an allowed name that
//! resolves to loopback or a private address is refused on the address actually connected to,
//! the client gets a 403 (or, for a relayed TCP connection, a close) and the audit record says
//! which address, which range, and how to allow it. Pins and address rules lift it.
//!
//! The in-process tests run in a network namespace of their own (root, as every jail test),
//! with `169.254.169.254` and `10.99.0.1` on its loopback: the metadata address is a server of
//! the test, never a real metadata service, and no test depends on the machine's addresses.
//! Then the same through the binaries: `boundary sidecar` with the policy's `spec.resolve` pins
//! (hot-reloaded, united across policies), and `boundary run --upstream-dns` with curl in a jail.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boundary_api::Mode;
use boundary_api::rules::{self, RuleSet, RuleSource};
use boundary_proxy::audit::{Identity, Sink};
use boundary_proxy::policy::{PolicyStore, Source};
use boundary_proxy::tls::CertAuthority;
use boundary_proxy::{Destination, Proxy, ProxyConfig};
use boundary_test_kit::{TestCa, TestServer};
use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket, UnixStream};

/// A DNS server on loopback answering A queries from a table the test changes: each name has a
/// list of answers, one per query, the last repeated (TTL 0, so the proxy asks every time).
/// AAAA and unknown names get an empty answer.
struct Dns {
    addr: SocketAddr,
    answers: Arc<Mutex<HashMap<String, Vec<Vec<IpAddr>>>>>,
    queries: Arc<AtomicUsize>,
}

impl Dns {
    async fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answers: Arc<Mutex<HashMap<String, Vec<Vec<IpAddr>>>>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (table, count) = (answers.clone(), queries.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if query.metadata.message_type != MessageType::Query {
                    continue;
                }
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.metadata.response_code = ResponseCode::NoError;
                for q in &query.queries {
                    let name = q.name().to_ascii().trim_end_matches('.').to_lowercase();
                    if q.query_type() == RecordType::A {
                        count.fetch_add(1, Ordering::SeqCst);
                        let mut table = table.lock().unwrap();
                        let ips = match table.get_mut(&name) {
                            Some(list) if list.len() > 1 => list.remove(0),
                            Some(list) => list.first().cloned().unwrap_or_default(),
                            None => Vec::new(),
                        };
                        for ip in ips {
                            if let IpAddr::V4(v4) = ip {
                                reply.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    0,
                                    RData::A(A(v4)),
                                ));
                            }
                        }
                    }
                    reply.add_query(q.clone());
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Dns {
            addr,
            answers,
            queries,
        }
    }

    /// `name` answers `rounds[0]` to the next A query, then `rounds[1]`, …, the last one for
    /// good.
    fn answer(&self, name: &str, rounds: &[&[&str]]) {
        let rounds = rounds
            .iter()
            .map(|r| r.iter().map(|ip| ip.parse().unwrap()).collect())
            .collect();
        self.answers.lock().unwrap().insert(name.to_owned(), rounds);
    }
}

/// The proxy in-process, resolving through `dns`, with `pins` as `--resolve`.
struct Guarded {
    proxy: Proxy,
    ca_pem: String,
    audit: PathBuf,
    _dir: TempDir,
}

impl Guarded {
    fn start(allow: &[&str], tcp_ports: &[(&str, u16)], dns: &Dns, pins: &[(&str, &str)]) -> Self {
        let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        let tcp: Vec<boundary_api::TcpRule> = tcp_ports
            .iter()
            .map(|(domain, port)| boundary_api::TcpRule {
                domain: (*domain).to_owned(),
                ports: vec![boundary_api::Port::new(*port).unwrap()],
            })
            .collect();
        let compiled = rules::compile(RuleSource {
            policy: Some("agent"),
            field_prefix: "spec.",
            allow: &allow,
            tcp: &tcp,
            ..RuleSource::default()
        })
        .unwrap();
        let dir = tempfile::Builder::new().prefix("guard").tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let upstream_ca = TestCa::new();
        let ca = CertAuthority::generate("guard").unwrap();
        let ca_pem = ca.ca_pem().to_owned();
        let proxy = Proxy::start(ProxyConfig {
            session: "guard".into(),
            identity: Identity::default(),
            tier: None,
            policy: PolicyStore::load(Source::Static(Arc::new(RuleSet::new(
                compiled,
                Mode::Enforce,
            ))))
            .unwrap(),
            upstream_cas: vec![upstream_ca.pem_path.clone()],
            resolve: pins
                .iter()
                .map(|(n, ip)| ((*n).to_owned(), ip.parse().unwrap()))
                .collect(),
            upstream_dns: Some(dns.addr),
            audit: Sink::File(audit.clone()),
            audit_options: boundary_proxy::audit::Options::default(),
            ca: Arc::new(ca),
            upstream_timeout: Duration::from_secs(15),
            credential_values: boundary_proxy::credentials::values::ValueSource::None,
        })
        .unwrap();
        Guarded {
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

    /// A TLS client trusting the proxy's CA (interception), speaking HTTP/1.1.
    fn tls_client(&self) -> tokio_rustls::TlsConnector {
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
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// `GET http://name:port/` through a new connection: (status, body).
    async fn get(&self, name: &str, port: u16) -> (u16, String) {
        get_over(self.connect(name, port), name, port).await
    }

    /// The audit lines once there are `count` of them.
    async fn audit_lines(&self, count: usize) -> Vec<Value> {
        for _ in 0..100 {
            self.proxy.flush().await;
            if self.read_audit().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// `GET http://name:port/` over `stream` (a connection the forwarder handed over): (status, body).
async fn get_over(stream: UnixStream, name: &str, port: u16) -> (u16, String) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", format!("{name}:{port}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn field<'a>(line: &'a Value, key: &str) -> &'a str {
    line[key].as_str().unwrap_or_default()
}

/// A public-range address where nothing answers (TEST-NET-1: no route in the namespace).
const NOWHERE: &str = "192.0.2.1";
/// The metadata address, on the namespace's loopback.
const METADATA: &str = "169.254.169.254";
/// A private address on the namespace's loopback.
const OTHER: &str = "10.99.0.1";

/// Runs `test` in a new network namespace (on a thread of its own, with a current-thread
/// runtime, so every task of the proxy runs there) whose loopback is up and also has
/// [`METADATA`] and [`OTHER`].
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    common::require_root();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("a network namespace of its own (these tests need root, as the jail tests)");
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", &format!("{METADATA}/32"), "dev", "lo"],
            &["addr", "add", &format!("{OTHER}/32"), "dev", "lo"],
        ] {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// A minimal HTTP server on `addr` answering every request `200 {body}`; counts requests.
async fn http_server(addr: SocketAddr, body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, served)
}

#[test]
fn a_name_rebound_to_loopback_is_refused_on_the_address_connected_to() {
    in_netns(|| async {
        let dns = Dns::start().await;
        let up = TestServer::start(None).await;
        // The allowed name answers a public address (nothing there) and loopback, where the
        // upstream listens: only the guard stands between the agent and it.
        dns.answer("rebind.test", &[&[NOWHERE, "127.0.0.1"]]);
        let proxy = Guarded::start(&["domain=rebind.test"], &[], &dns, &[]);
        let (status, body) = proxy.get("rebind.test", up.port()).await;
        assert_eq!(status, 403, "{body}");
        for part in [
            "private-address guard",
            "127.0.0.1, an address of rebind.test",
            "loopback",
            "podLocal",
            "--resolve rebind.test=127.0.0.1",
            "its other addresses failed",
        ] {
            assert!(body.contains(part), "{part:?} not in the 403:\n{body}");
        }
        assert_eq!(up.requests.load(Ordering::SeqCst), 0, "nothing reached it");
        assert!(
            dns.queries.load(Ordering::SeqCst) >= 1,
            "the proxy asked DNS"
        );
        let lines = proxy.audit_lines(1).await;
        let line = &lines[0];
        assert_eq!(field(line, "decision"), "deny", "{line}");
        assert_eq!(field(line, "denied_by"), "private-address-guard", "{line}");
        assert_eq!(line["status"], 403);
        assert!(field(line, "reason").contains("127.0.0.1"), "{line}");
        assert!(field(line, "reason").contains("[loopback]"), "{line}");

        // Pinned by the operator (`--resolve`), the same request goes through, DNS unasked.
        let asked = dns.queries.load(Ordering::SeqCst);
        let pinned = Guarded::start(
            &["domain=rebind.test"],
            &[],
            &dns,
            &[("rebind.test", "127.0.0.1")],
        );
        let (status, body) = pinned.get("rebind.test", up.port()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(up.requests.load(Ordering::SeqCst), 1);
        assert_eq!(
            dns.queries.load(Ordering::SeqCst),
            asked,
            "a pinned name is not asked"
        );
    });
}

#[test]
fn intercepted_https_to_a_rebound_name_gets_the_403_inside_tls() {
    in_netns(|| async {
        let dns = Dns::start().await;
        dns.answer("rebind.test", &[&["127.0.0.1"]]);
        let proxy = Guarded::start(&["domain=rebind.test"], &[], &dns, &[]);
        let stream = proxy.connect("rebind.test", 443);
        let name = rustls::pki_types::ServerName::try_from("rebind.test").unwrap();
        let tls = proxy.tls_client().connect(name, stream).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/")
            .header("host", "rebind.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 403);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("127.0.0.1, an address of rebind.test"),
            "{body}"
        );
        let lines = proxy.audit_lines(1).await;
        assert_eq!(field(&lines[0], "scheme"), "https", "{}", lines[0]);
        assert_eq!(field(&lines[0], "denied_by"), "private-address-guard");
    });
}

#[test]
fn metadata_is_refused_for_an_allowed_name_and_reached_when_pinned_or_named_by_a_rule() {
    in_netns(|| async {
        let (port, served) =
            http_server(format!("{METADATA}:0").parse().unwrap(), "metadata").await;
        let dns = Dns::start().await;
        dns.answer("metadata.test", &[&[METADATA]]);
        dns.answer("internal.test", &[&[OTHER]]);
        let proxy = Guarded::start(
            &[
                "domain=metadata.test",
                "domain=internal.test",
                "domain=pinned.test",
            ],
            &[],
            &dns,
            &[("pinned.test", METADATA)],
        );
        let (status, body) = proxy.get("metadata.test", port).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("169.254.169.254, an address of metadata.test")
                && body.contains("cloud metadata")
                && body.contains(&format!("domain=169.254.169.254 port={port}")),
            "{body}"
        );
        let (status, body) = proxy.get("internal.test", port).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("RFC 1918") && body.contains("[private]"),
            "{body}"
        );
        assert_eq!(served.load(Ordering::SeqCst), 0);
        // Pinned with --resolve: reached.
        let (status, body) = proxy.get("pinned.test", port).await;
        assert_eq!((status, body.as_str()), (200, "metadata"));
        let lines = proxy.audit_lines(3).await;
        assert_eq!(field(&lines[0], "denied_by"), "private-address-guard");
        assert_eq!(field(&lines[1], "denied_by"), "private-address-guard");
        assert_eq!(field(&lines[2], "decision"), "allow", "{}", lines[2]);

        // A rule naming the network (on its port) lets the name through too.
        let ruled = Guarded::start(
            &[
                "domain=metadata.test",
                &format!("domain=169.254.0.0/16 port={port}"),
            ],
            &[],
            &dns,
            &[],
        );
        let (status, body) = ruled.get("metadata.test", port).await;
        assert_eq!((status, body.as_str()), (200, "metadata"));
        assert_eq!(served.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn answers_that_flip_with_ttl_0_are_judged_on_every_connection() {
    in_netns(|| async {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(b"hello from the server\n").await;
            }
        });
        let dns = Dns::start().await;
        // First a private address a rule names, then loopback: the same server, now on an
        // address the guard refuses.
        dns.answer("flip.test", &[&[OTHER], &["127.0.0.1"]]);
        let proxy = Guarded::start(
            &[&format!("domain={OTHER}/32")],
            &[("flip.test", port)],
            &dns,
            &[],
        );
        let read_all = |mut stream: UnixStream| async move {
            let mut out = String::new();
            let read = stream.read_to_string(&mut out);
            let _ = tokio::time::timeout(Duration::from_secs(15), read).await;
            out
        };
        let first = read_all(proxy.connect("flip.test", port)).await;
        assert_eq!(first, "hello from the server\n");
        let second = read_all(proxy.connect("flip.test", port)).await;
        assert_eq!(second, "", "the rebound connection is closed unrelayed");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "only the first reached it"
        );
        let lines = proxy.audit_lines(2).await;
        assert_eq!(field(&lines[0], "decision"), "allow", "{}", lines[0]);
        assert_eq!(field(&lines[1], "decision"), "deny", "{}", lines[1]);
        assert_eq!(field(&lines[1], "denied_by"), "private-address-guard");
        assert!(
            field(&lines[1], "reason").contains("127.0.0.1, an address of flip.test"),
            "{}",
            lines[1]
        );
    });
}

/// A compiled-policy file with one entry per `(name, allow, resolve)`, all selecting the pod.
fn policy_file(entries: &[(&str, &[&str], Value)]) -> Value {
    let policies: Vec<Value> = entries
        .iter()
        .map(|(name, allow, resolve)| {
            serde_json::json!({"name": name, "podSelector": {}, "allow": allow, "resolve": resolve})
        })
        .collect();
    serde_json::json!({"version": 1, "namespace": "agents", "policies": policies})
}

#[tokio::test]
async fn the_sidecar_lets_names_through_that_the_policies_pin_united_and_reloaded() {
    common::require_root();
    let up = TestServer::start(None).await;
    let port = up.port();
    let dns = Dns::start().await;
    // DNS points both names at loopback, where the upstream listens: refused until pinned.
    dns.answer("models.test", &[&["127.0.0.1"]]);
    dns.answer("vectors.test", &[&["127.0.0.1"]]);
    let allow: &[&str] = &["domain=models.test", "domain=vectors.test"];
    let unpinned = policy_file(&[("agent", allow, serde_json::json!([]))]);
    let mut sidecar =
        common::Sidecar::start(&unpinned, &["--upstream-dns", &dns.addr.to_string()]).await;
    let (status, body) = get_over(
        sidecar.connect("models.test", port).await,
        "models.test",
        port,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("spec.resolve: [{host: models.test"), "{body}");
    assert!(
        dns.queries.load(Ordering::SeqCst) >= 1,
        "the sidecar asked --upstream-dns"
    );
    // Two policies, each pinning one name: the pod gets both pins.
    let pinned = policy_file(&[
        (
            "agent",
            allow,
            serde_json::json!([{"host": "models.test", "addresses": ["127.0.0.1"]}]),
        ),
        (
            "extra",
            &[],
            serde_json::json!([{"host": "Vectors.Test.", "addresses": ["127.0.0.1"]}]),
        ),
    ]);
    sidecar.policy.publish(&pinned);
    let mut reached = (0, String::new());
    for _ in 0..50 {
        reached = get_over(
            sidecar.connect("models.test", port).await,
            "models.test",
            port,
        )
        .await;
        if reached.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(reached.0, 200, "pinned after the reload: {}", reached.1);
    let (status, body) = get_over(
        sidecar.connect("vectors.test", port).await,
        "vectors.test",
        port,
    )
    .await;
    assert_eq!(status, 200, "the other policy's pin: {body}");
    let audit = sidecar.audit().await;
    assert!(
        audit
            .iter()
            .any(|l| field(l, "denied_by") == "private-address-guard"
                && field(l, "reason").contains("127.0.0.1, an address of models.test")),
        "{audit:#?}"
    );
}

#[tokio::test]
async fn boundary_run_asks_upstream_dns_and_curl_in_the_jail_gets_the_guards_403() {
    common::require_root();
    let up = TestServer::start(None).await;
    let dns = Dns::start().await;
    dns.answer("rebind.test", &[&[NOWHERE, "127.0.0.1"]]);
    let dns_addr = dns.addr.to_string();
    let url = format!("http://rebind.test:{}/", up.port());
    let script = format!("curl -sS -m 20 {url}");
    let args = ["--allow", "domain=rebind.test", "--upstream-dns", &dns_addr];
    let out = common::jailed(common::As::Root, &args, &script).await;
    let (stdout, stderr) = (common::stdout(&out), common::stderr(&out));
    assert!(
        stdout.contains("Blocked by Agent Boundary: private-address guard")
            && stdout.contains("127.0.0.1, an address of rebind.test")
            && stdout.contains("--resolve rebind.test=127.0.0.1"),
        "curl shows the 403 saying why:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("private-address-guard"),
        "audited: {stderr}"
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
    assert!(
        dns.queries.load(Ordering::SeqCst) >= 1,
        "asked the --upstream-dns server"
    );
    // The operator's pin lets it through.
    let pinned = [&args[..], &["--resolve", "rebind.test=127.0.0.1"]].concat();
    let out = common::jailed(common::As::Root, &pinned, &script).await;
    assert!(
        common::stdout(&out).starts_with("hello GET rebind.test"),
        "{}\n{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

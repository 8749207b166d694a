//! `e2e-tools`: what the end-to-end tests and the demo run inside pods, as one static binary in a
//! `FROM scratch` image (no image can be pulled where the tests run, so no curl).
//!
//! - `serve`: an HTTPS server with a certificate of its own CA; answers every request with
//!   `hello from NAME: METHOD PATH`.
//! - `fetch`: the agent. GETs each URL (again every `--every` seconds) and prints one line per
//!   request: `fetch URL -> STATUS BODY` or `fetch URL -> error: WHY`. Trusts `SSL_CERT_FILE`
//!   (the jail points it at the proxy's CA bundle) or the public roots; resolves names through
//!   `/etc/hosts` and `/etc/resolv.conf` like any client.
//! - `status`: prints the capability, `NoNewPrivs` and seccomp lines of `/proc/self/status`.
//! - `serve-http`: the same answer over plain HTTP (a server in the jail, probed by the kubelet).
//! - `echo`: a TCP echo server (a pod-local sidecar such as a database proxy).
//! - `talk`: connects to a TCP address, sends `ping`, prints what came back (again every
//!   `--every` seconds).
//! - `exit`: exits with the given code (a run-to-completion step).
//! - `sleep`: waits forever (a container that only needs to exist).
//! - `trace`: looks for a text in every process's environment and command line and in the
//!   container's files (a credential that must not be there).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[derive(Debug, Parser)]
#[command(
    name = "e2e-tools",
    about = "Agent and servers of the end-to-end tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTPS server answering `hello from NAME: METHOD PATH`.
    Serve {
        /// Listen address.
        #[arg(long, env = "E2E_ADDR", default_value = "0.0.0.0:8443")]
        addr: SocketAddr,
        /// Certificate chain (PEM).
        #[arg(long, env = "E2E_CERT")]
        cert: PathBuf,
        /// Private key (PEM).
        #[arg(long, env = "E2E_KEY")]
        key: PathBuf,
        /// Name in every answer.
        #[arg(long, env = "E2E_NAME", default_value = "e2e")]
        name: String,
        /// Headers the answer shows, by the SHA-256 of their value (`NAME=sha256:HEX12`,
        /// `NAME=-` when absent): the test knows what the value should be, the client never
        /// learns it from the answer.
        #[arg(long = "show-header")]
        show_headers: Vec<String>,
    },
    /// GET each URL and print the outcome.
    Fetch {
        /// URLs (`http://` or `https://`).
        #[arg(required = true, env = "E2E_URLS", value_delimiter = ' ')]
        urls: Vec<String>,
        /// Fetch again every this many seconds, forever (0: once).
        #[arg(long, env = "E2E_EVERY", default_value_t = 0)]
        every: u64,
        /// Seconds a request may take.
        #[arg(long, env = "E2E_TIMEOUT", default_value_t = 10)]
        timeout: u64,
        /// `NAME=VAR`: send header NAME with the value of environment variable VAR (how an
        /// agent sends its API key).
        #[arg(long = "header-from-env")]
        headers: Vec<String>,
    },
    /// Print the capability, `NoNewPrivs` and seccomp lines of `/proc/self/status`.
    Status {
        /// Then wait forever (a container that must keep running).
        #[arg(long)]
        hold: bool,
    },
    /// Plain HTTP server answering `hello from NAME: METHOD PATH`.
    ServeHttp {
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0:8080")]
        addr: SocketAddr,
        /// Name in every answer.
        #[arg(long, default_value = "e2e")]
        name: String,
    },
    /// TCP echo server.
    Echo {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:5432")]
        addr: SocketAddr,
    },
    /// Send `ping` to a TCP address and print the answer.
    Talk {
        /// The address.
        addr: SocketAddr,
        /// Again every this many seconds, forever (0: once).
        #[arg(long, default_value_t = 0)]
        every: u64,
    },
    /// Exit with this code.
    Exit {
        /// The exit code.
        code: u8,
    },
    /// Wait forever.
    Sleep,
    /// Look for TEXT in every process's environment and command line and in every file of the
    /// container (not /proc, /sys, /dev); print `trace: none` or one `trace: found in ...` line
    /// per place.
    Trace {
        /// The text.
        text: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("e2e-tools: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                addr,
                cert,
                key,
                name,
                show_headers,
            } => serve(addr, &cert, &key, Hello::new(name, show_headers)).await,
            Command::Fetch {
                urls,
                every,
                timeout,
                headers,
            } => {
                let headers = headers_from_env(&headers)?;
                fetch_all(&urls, every, Duration::from_secs(timeout.max(1)), &headers).await
            }
            Command::Status { hold } => {
                status()?;
                if hold {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
            Command::ServeHttp { addr, name } => serve_http(addr, name).await,
            Command::Echo { addr } => echo(addr).await,
            Command::Talk { addr, every } => talk_all(addr, every).await,
            Command::Exit { code } => {
                println!("exiting with {code}");
                std::process::exit(i32::from(code))
            }
            Command::Sleep => std::future::pending().await,
            Command::Trace { text } => {
                trace(&text);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e-tools: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What a server answers: `hello from NAME: METHOD PATH`, then the headers it shows.
#[derive(Debug)]
struct Hello {
    name: String,
    show_headers: Vec<String>,
}

impl Hello {
    fn new(name: String, show_headers: Vec<String>) -> Arc<Hello> {
        Arc::new(Hello { name, show_headers })
    }

    fn answer<B>(&self, req: &Request<B>) -> String {
        let mut body = format!(
            "hello from {}: {} {}",
            self.name,
            req.method(),
            req.uri().path()
        );
        for header in &self.show_headers {
            let value = req
                .headers()
                .get(header.as_str())
                .map_or("-".into(), |v| fingerprint(v.as_bytes()));
            let _ = write!(body, " {header}={value}");
        }
        body.push('\n');
        body
    }
}

/// `sha256:` and the first 12 hex digits of the SHA-256 of `value`.
fn fingerprint(value: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(value);
    let hex: String = digest.iter().take(6).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    format!("sha256:{hex}")
}

async fn serve(addr: SocketAddr, cert: &Path, key: &Path, hello: Arc<Hello>) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(cert, key)?));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("e2e-tools: serving https on {}", listener.local_addr()?);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let hello = hello.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("e2e-tools: TLS handshake with {peer} failed: {e}");
                    return;
                }
            };
            answer_hello(tls, &hello, peer).await;
        });
    }
}

/// Answers every request on one connection with `hello from NAME: METHOD PATH`.
async fn answer_hello<T>(io: T, hello: &Arc<Hello>, peer: SocketAddr)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hello = hello.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let body = hello.answer(&req);
        eprintln!("e2e-tools: {peer} {} {}", req.method(), req.uri());
        async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body)))) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn serve_http(addr: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("e2e-tools: serving http on {}", listener.local_addr()?);
    let hello = Hello::new(name, Vec::new());
    loop {
        let (tcp, peer) = listener.accept().await?;
        let hello = hello.clone();
        tokio::spawn(async move {
            answer_hello(tcp, &hello, peer).await;
        });
    }
}

async fn echo(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("e2e-tools: echoing on {}", listener.local_addr()?);
    loop {
        let (mut tcp, peer) = listener.accept().await?;
        eprintln!("e2e-tools: echo connection from {peer}");
        tokio::spawn(async move {
            let (mut read, mut write) = tcp.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

async fn talk_all(addr: SocketAddr, every: u64) -> anyhow::Result<()> {
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(10), talk(addr)).await {
            Ok(Ok(answer)) => format!("answer {answer:?}"),
            Ok(Err(e)) => format!("error: {e:#}"),
            Err(_) => "error: no answer within 10 s".to_owned(),
        };
        println!("talk {addr} -> {line}");
        if every == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(every)).await;
    }
}

async fn talk(addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"ping").await?;
    tcp.shutdown().await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Roots for HTTPS: `SSL_CERT_FILE` when set (the jail's bundle), else the public roots.
fn client_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match std::env::var_os("SSL_CERT_FILE") {
        Some(file) => {
            for cert in CertificateDer::pem_file_iter(&file)
                .with_context(|| format!("reading SSL_CERT_FILE {}", file.display()))?
            {
                roots.add(cert?)?;
            }
        }
        None => {
            roots.add_parsable_certificates(
                webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned(),
            );
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The parts of an `http(s)://host[:port]/path` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    path_and_query: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => anyhow::bail!("{url}: only http:// and https:// URLs"),
    };
    let host = uri.host().with_context(|| format!("{url}: no host"))?;
    Ok(Target {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string),
    })
}

/// `NAME=VAR` pairs → (header name, the value of VAR).
fn headers_from_env(specs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, var) = spec
                .split_once('=')
                .with_context(|| format!("--header-from-env {spec:?}: expected NAME=VAR"))?;
            let value = std::env::var(var).with_context(|| format!("{var} is not set"))?;
            Ok((name.to_owned(), value))
        })
        .collect()
}

async fn fetch_all(
    urls: &[String],
    every: u64,
    timeout: Duration,
    headers: &[(String, String)],
) -> anyhow::Result<()> {
    let tls = client_config()?;
    let resolver = hickory_resolver::TokioResolver::builder_tokio()
        .and_then(hickory_resolver::ResolverBuilder::build)
        .context("reading /etc/resolv.conf")?;
    loop {
        for url in urls {
            let line =
                match tokio::time::timeout(timeout, fetch(url, &tls, &resolver, headers)).await {
                    Ok(Ok((status, body))) => format!("{status} {}", first_line(&body)),
                    Ok(Err(e)) => format!("error: {e:#}"),
                    Err(_) => format!("error: no answer within {} s", timeout.as_secs()),
                };
            println!("fetch {url} -> {line}");
        }
        if every == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(every)).await;
    }
}

fn first_line(body: &str) -> &str {
    let line = body.lines().next().unwrap_or_default();
    &line[..line.len().min(200)]
}

async fn fetch(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    resolver: &hickory_resolver::TokioResolver,
    headers: &[(String, String)],
) -> anyhow::Result<(u16, String)> {
    let target = parse_url(url)?;
    let ips: Vec<std::net::IpAddr> = match target.host.parse() {
        Ok(ip) => vec![ip],
        Err(_) => resolver
            .lookup_ip(target.host.as_str())
            .await
            .with_context(|| format!("resolving {}", target.host))?
            .iter()
            .collect(),
    };
    // Every address in turn, like curl (`localhost` may name ::1 first).
    let mut last = anyhow::anyhow!("{} has no address", target.host);
    let mut connected = None;
    for ip in ips {
        match tokio::net::TcpStream::connect((ip, target.port)).await {
            Ok(tcp) => {
                connected = Some(tcp);
                break;
            }
            Err(e) => {
                last = anyhow::Error::new(e).context(format!("connecting to {ip}:{}", target.port));
            }
        }
    }
    let Some(tcp) = connected else {
        return Err(last);
    };
    let mut request = Request::get(target.path_and_query.as_str())
        .header(hyper::header::HOST, authority(&target));
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let response = if target.tls {
        let name = ServerName::try_from(target.host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    Ok(response)
}

fn authority(target: &Target) -> String {
    let default = if target.tls { 443 } else { 80 };
    if target.port == default {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    }
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> anyhow::Result<(u16, String)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Prints where `text` occurs: process environments and command lines, and files up to 16 MiB
/// outside /proc, /sys and /dev (unreadable places are skipped: what this user cannot read, the
/// agent running as it cannot either).
fn trace(text: &str) {
    let needle = text.as_bytes();
    let mut found = Vec::new();
    // Not this process: the text is in its own command line.
    let own = std::process::id().to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
                continue;
            }
            for what in ["environ", "cmdline"] {
                let path = entry.path().join(what);
                if std::fs::read(&path).is_ok_and(|b| contains(&b, needle)) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    let mut dirs = vec![PathBuf::from("/")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if !["/proc", "/sys", "/dev"]
                    .iter()
                    .any(|p| path == Path::new(p))
                {
                    dirs.push(path);
                }
            } else if meta.is_file()
                && meta.len() <= 16 << 20
                && std::fs::read(&path).is_ok_and(|b| contains(&b, needle))
            {
                found.push(path.display().to_string());
            }
        }
    }
    if found.is_empty() {
        println!("trace: none");
    }
    for place in found {
        println!("trace: found in {place}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn status() -> anyhow::Result<()> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    for line in text.lines() {
        if line.starts_with("Cap") || line.starts_with("NoNewPrivs") || line.starts_with("Seccomp:")
        {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_their_parts() {
        assert_eq!(
            parse_url("https://allowed.e2e.test/a?b=c").unwrap(),
            Target {
                tls: true,
                host: "allowed.e2e.test".into(),
                port: 443,
                path_and_query: "/a?b=c".into()
            }
        );
        let plain = parse_url("http://[::1]:8080").unwrap();
        assert_eq!(
            (plain.tls, plain.host.as_str(), plain.port),
            (false, "::1", 8080)
        );
        assert_eq!(plain.path_and_query, "/");
        assert_eq!(authority(&plain), "::1:8080");
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[tokio::test]
    async fn fetch_reaches_serve_over_tls_with_the_servers_ca() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut ca = ca;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), leaf_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).unwrap();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        tokio::spawn(async move {
            serve(
                addr,
                &cert,
                &key,
                Hello::new("unit".into(), vec!["x-api-key".into()]),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let resolver = hickory_resolver::TokioResolver::builder_tokio()
            .unwrap()
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/x", addr.port());
        // "localhost" resolves through /etc/hosts.
        let (status, body) = fetch(&url, &config, &resolver, &[]).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "hello from unit: GET /x x-api-key=-\n");
        let key = [("x-api-key".to_owned(), "k1".to_owned())];
        let (_, body) = fetch(&url, &config, &resolver, &key).await.unwrap();
        assert_eq!(
            body,
            format!("hello from unit: GET /x x-api-key={}\n", fingerprint(b"k1"))
        );
        // echo -n k1 | sha256sum
        assert_eq!(fingerprint(b"k1"), "sha256:6ab9f1eb8f7d");
        // Without the server's CA the handshake fails, and says so.
        let public = client_config_without_env();
        let err = fetch(&url, &public, &resolver, &[]).await.unwrap_err();
        assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
    }

    fn client_config_without_env() -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

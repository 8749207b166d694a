//! Load benchmark of the policy proxy (a `boundary sidecar` process) against direct connections
//! and squid with ssl-bump, in one run on one machine:
//!
//! - HTTPS keep-alive small requests: requests per second and p50/p99 latency (the added latency
//!   is the difference to direct);
//! - one 1 GiB download: throughput;
//! - resident memory of the proxy with 1,000 idle keep-alive connections;
//! - the same keep-alive and bulk loads through relays that do not intercept: a `tls:
//!   Passthrough` rule and a TCP rule (`spec.tcp`), the client's TLS ending at the upstream.
//!
//! Every row prints the target of issue 16 next to its figure.
//!
//! Proxies are driven the way clients use them: `CONNECT` on the explicit-proxy port, then TLS
//! (intercepted by the proxy) and HTTP/1.1 keep-alive inside. The boundary proxy is also driven
//! through its unix socket, the path jailed connections take in a pod.
#![forbid(unsafe_code)]
// Figures for humans: counts and byte totals are far below 2^52, so float casts are exact enough.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use boundary_test_kit::{Alpn, Reply, TestCa, TestServer, free_port, tls_connector, wait_port};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Load benchmark of the policy proxy.
#[derive(Debug, Parser)]
struct Args {
    /// The `boundary` binary (release build).
    #[arg(long, env = "BOUNDARY_BIN")]
    boundary: PathBuf,
    /// Also measure squid (ssl-bump); needs Debian's squid-openssl.
    #[arg(long, env = "BENCH_SQUID")]
    squid: bool,
    /// Seconds per keep-alive measurement.
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 16)]
    connections: usize,
    /// Idle connections for the memory measurement.
    #[arg(long, env = "BENCH_IDLE", default_value_t = 1000)]
    idle: usize,
    /// Bytes of the bulk download.
    #[arg(long, env = "BENCH_BULK_BYTES", default_value_t = 1 << 30)]
    bulk: u64,
    /// Rounds of each measurement; figures are medians.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Fresh `boundary sidecar` starts of the first-request measurement.
    #[arg(long, env = "BENCH_FIRST_STARTS", default_value_t = 20)]
    first_starts: usize,
    /// Run only these parts (comma list of keep-alive, bulk, idle, first-request); all by default.
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',', default_values_t = [Part::KeepAlive, Part::Bulk, Part::Idle, Part::FirstRequest])]
    only: Vec<Part>,
    /// Worker threads of the boundary sidecar (`--worker-threads`); 0 passes none, so the
    /// sidecar runs with its default (one thread).
    #[arg(long, env = "BENCH_BOUNDARY_WORKERS", default_value_t = 0)]
    boundary_workers: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, Debug)]
enum Part {
    KeepAlive,
    Bulk,
    Idle,
    FirstRequest,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        f.write_str(
            self.to_possible_value()
                .expect("no skipped variants")
                .get_name(),
        )
    }
}

const NAME: &str = "bench.test";
/// Relayed by a `tls: Passthrough` rule: the client's TLS ends at the upstream.
const PASSTHROUGH_NAME: &str = "passthrough.test";
/// Relayed by a TCP rule on the upstream's port.
const TCP_NAME: &str = "tcp.test";

/// Issue 16's targets, printed next to the figures.
const TARGET_KEEP_ALIVE: &str = "target: at least 45% of direct";
const TARGET_RELAY: &str = "target: at least 90% of direct";
const TARGET_BULK: &str = "target: at least 1638 MiB/s per proxy core";
const TARGET_IDLE: &str = "target: under 16 KiB each";

/// How the client reaches the upstream.
#[derive(Debug, Clone)]
enum Route {
    Direct(SocketAddr),
    Connect {
        proxy: SocketAddr,
        upstream_port: u16,
    },
    Relay {
        socket: PathBuf,
        upstream_port: u16,
        /// The name the jail's DNS handed out (the TLS server name too).
        name: &'static str,
    },
}

impl Route {
    /// The TLS server name the client asks for.
    fn server_name(&self) -> &'static str {
        match self {
            Route::Relay { name, .. } => name,
            Route::Direct(_) | Route::Connect { .. } => NAME,
        }
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for T {}

async fn open(route: &Route) -> anyhow::Result<Box<dyn Stream>> {
    Ok(match route {
        Route::Direct(addr) => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        Route::Connect {
            proxy,
            upstream_port,
        } => {
            let mut s = TcpStream::connect(proxy).await?;
            s.set_nodelay(true)?;
            let req = format!(
                "CONNECT {NAME}:{upstream_port} HTTP/1.1\r\nHost: {NAME}:{upstream_port}\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await? == 0 {
                    bail!("proxy closed during CONNECT");
                }
                buf.push(byte[0]);
            }
            if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
                bail!("CONNECT refused: {}", String::from_utf8_lossy(&buf));
            }
            Box::new(s)
        }
        Route::Relay {
            socket,
            upstream_port,
            name,
        } => {
            let mut s = UnixStream::connect(socket).await?;
            // As the jail's forwarder does.
            let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &(4 << 20));
            let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
            let header =
                serde_json::json!({"dst": format!("198.18.0.1:{upstream_port}"), "name": name});
            s.write_all(format!("BOUNDARY1 {header}\n").as_bytes())
                .await?;
            Box::new(s)
        }
    })
}

/// A client trusting the CA in the PEM file `ca`.
fn tls_client(ca: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let pem = std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    Ok(tls_connector(&pem, Alpn::Http1)?)
}

async fn session(
    route: &Route,
    tls: &tokio_rustls::TlsConnector,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = open(route).await.context("opening the route")?;
    let tls_stream = tls
        .connect(route.server_name().try_into()?, stream)
        .await
        .context("TLS handshake")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(conn);
    Ok(sender)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", NAME)
        .body(Empty::new())
        .unwrap_or_default()
}

struct KeepAlive {
    rps: f64,
    p50: Duration,
    p99: Duration,
    /// The boundary proxy's CPU time per request (microseconds); 0 where it was not measured.
    proxy_cpu_us: f64,
}

async fn keep_alive(
    route: &Route,
    ca: &Path,
    conns: usize,
    seconds: u64,
) -> anyhow::Result<KeepAlive> {
    let tls = tls_client(ca)?;
    let mut senders = Vec::new();
    for i in 0..conns {
        senders.push(
            session(route, &tls)
                .await
                .with_context(|| format!("connection {i}"))?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for mut sender in senders {
        let (route, tls) = (route.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let start = Instant::now();
                // A proxy that closes after a response costs a new connection, as it would any
                // client; the time counts against that request.
                if sender.ready().await.is_err() {
                    sender = session(&route, &tls).await.context("reconnecting")?;
                }
                let resp = sender
                    .send_request(get("/small"))
                    .await
                    .context("request")?;
                resp.into_body().collect().await.context("response body")?;
                latencies.push(start.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Ok(KeepAlive {
        rps: all.len() as f64 / seconds as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        proxy_cpu_us: 0.0,
    })
}

async fn bulk(route: &Route, ca: &Path, bytes: u64) -> anyhow::Result<f64> {
    let tls = tls_client(ca)?;
    let mut sender = session(route, &tls).await?;
    let start = Instant::now();
    let resp = sender
        .send_request(get(&format!("/bulk?n={bytes}")))
        .await?;
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame?.into_data().map_or(0, |d| d.len() as u64);
    }
    if got != bytes {
        bail!("bulk download got {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / start.elapsed().as_secs_f64() / 1_048_576.0)
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches(" kB")
        .parse()?)
}

async fn idle_memory(route: &Route, ca: &Path, pid: u32, n: usize) -> anyhow::Result<f64> {
    let tls = tls_client(ca)?;
    // Warm up the leaf certificate cache and the upstream pool first.
    let mut warm = session(route, &tls).await?;
    warm.send_request(get("/small"))
        .await?
        .into_body()
        .collect()
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = session(route, &tls).await?;
        s.send_request(get("/small"))
            .await?
            .into_body()
            .collect()
            .await?;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!(
            "{}",
            std::fs::read_to_string(format!("/proc/{pid}/status"))?
        );
        eprintln!("{}", std::fs::read_to_string(format!("/proc/{pid}/smaps"))?);
    }
    drop(held);
    Ok((after.saturating_sub(before)) as f64 / n as f64)
}

struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn start_boundary(
    bin: &Path,
    dir: &Path,
    ca: &Path,
    workers: usize,
    upstream_port: u16,
) -> anyhow::Result<(Child, SocketAddr, PathBuf, PathBuf)> {
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        serde_json::to_vec(&serde_json::json!({"version": 1, "policies": [{
            "name": "bench",
            "allow": [format!("domain={NAME}")],
            "http": [{"domains": [PASSTHROUGH_NAME], "tls": "Passthrough"}],
            "tcp": [{"domain": TCP_NAME, "ports": [upstream_port]}],
        }]}))?,
    )?;
    let socket = dir.join("proxy.sock");
    let explicit = free_port()?;
    let child = tokio::process::Command::new(bin)
        .args(["sidecar", "--socket"])
        .arg(&socket)
        .arg("--policy-file")
        .arg(&policy)
        .args([
            "--explicit-proxy",
            &explicit.to_string(),
            "--resolve",
            &format!("{NAME}=127.0.0.1"),
            "--resolve",
            &format!("{PASSTHROUGH_NAME}=127.0.0.1"),
            "--resolve",
            &format!("{TCP_NAME}=127.0.0.1"),
            "--upstream-ca",
        ])
        .arg(ca)
        .args(["--audit-file", "/dev/null", "--log-level", "warn"])
        .args(
            (workers > 0)
                .then(|| ["--worker-threads".to_owned(), workers.to_string()])
                .into_iter()
                .flatten(),
        )
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting boundary sidecar")?;
    wait_port(explicit, "boundary sidecar").await?;
    Ok((Child(child), explicit, socket, dir.join("ca.crt")))
}

async fn start_squid(
    dir: &Path,
    upstream_ca: &Path,
    upstream: SocketAddr,
) -> anyhow::Result<(Child, SocketAddr, PathBuf)> {
    let port = free_port()?;
    let ca_key = dir.join("squid-ca.key");
    let ca_pem = dir.join("squid-ca.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=squid bench CA",
            "-keyout",
        ])
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca_pem)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("openssl could not make the squid CA");
    }
    let both = dir.join("squid-ca-both.pem");
    std::fs::write(
        &both,
        [std::fs::read(&ca_pem)?, std::fs::read(&ca_key)?].concat(),
    )?;
    let db = dir.join("ssl_db");
    let _ = std::fs::remove_dir_all(&db);
    let st = std::process::Command::new("/usr/lib/squid/security_file_certgen")
        .args(["-c", "-s"])
        .arg(&db)
        .args(["-M", "16MB"])
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("security_file_certgen failed");
    }
    // Squid drops privileges to its `proxy` user, which must reach these files.
    let st = std::process::Command::new("chown")
        .args(["-R", "proxy:proxy"])
        .arg(&db)
        .status()?;
    if !st.success() {
        bail!("chown of the squid certificate database failed");
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let run = dir.join("squid");
    std::fs::create_dir_all(&run)?;
    let st = std::process::Command::new("chown")
        .args(["proxy:proxy"])
        .arg(&run)
        .status()?;
    if !st.success() {
        bail!("chown of the squid run directory failed");
    }
    std::fs::set_permissions(&both, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let conf = dir.join("squid.conf");
    std::fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:{port} ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB tls-cert={both}\n\
             sslcrtd_program /usr/lib/squid/security_file_certgen -s {db} -M 16MB\n\
             sslcrtd_children 2\n\
             ssl_bump bump all\n\
             tls_outgoing_options cafile={ca}\n\
             acl bench dstdomain {NAME}\n\
             http_access allow bench\n\
             http_access deny all\n\
             cache deny all\n\
             access_log none\n\
             cache_log {run}/cache.log\n\
             pid_filename {run}/squid.pid\n\
             coredump_dir {run}\n\
             hosts_file {hosts}\n\
             dns_nameservers 127.0.0.1\n\
             workers 1\n",
            port = port.port(),
            both = both.display(),
            db = db.display(),
            ca = upstream_ca.display(),
            run = run.display(),
            hosts = dir.join("hosts").display(),
        ),
    )?;
    std::fs::write(dir.join("hosts"), format!("127.0.0.1 {NAME}\n"))?;
    let _ = upstream;
    let child = tokio::process::Command::new("squid")
        .args(["-N", "-f"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting squid")?;
    wait_port(port, "squid").await?;
    Ok((Child(child), port, ca_pem))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("boundary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let upstream_ca = TestCa::named("bench upstream CA");
    let upstream = TestServer::answering(
        Some(upstream_ca.server_config(&[NAME, PASSTHROUGH_NAME, TCP_NAME], Alpn::Http1)),
        Reply::Fixed(Bytes::from_static(b"ok")),
    )
    .await;
    let up = upstream.addr;
    let (boundary, explicit, socket, boundary_ca) = start_boundary(
        &args.boundary,
        &dir,
        &upstream_ca.pem_path,
        args.boundary_workers,
        up.port(),
    )
    .await?;
    let boundary_pid = boundary.0.id().context("pid")?;
    let mut routes = vec![
        ("direct", Route::Direct(up), upstream_ca.pem_path.clone()),
        (
            "boundary (CONNECT)",
            Route::Connect {
                proxy: explicit,
                upstream_port: up.port(),
            },
            boundary_ca.clone(),
        ),
        (
            "boundary (jail socket)",
            Route::Relay {
                socket: socket.clone(),
                upstream_port: up.port(),
                name: NAME,
            },
            boundary_ca.clone(),
        ),
        (
            "passthrough (jail socket)",
            Route::Relay {
                socket: socket.clone(),
                upstream_port: up.port(),
                name: PASSTHROUGH_NAME,
            },
            upstream_ca.pem_path.clone(),
        ),
        (
            "TCP rule (jail socket)",
            Route::Relay {
                socket: socket.clone(),
                upstream_port: up.port(),
                name: TCP_NAME,
            },
            upstream_ca.pem_path.clone(),
        ),
    ];
    let _squid = if args.squid {
        let (child, port, ca) = start_squid(&dir, &upstream_ca.pem_path, up).await?;
        routes.push((
            "squid ssl-bump (CONNECT)",
            Route::Connect {
                proxy: port,
                upstream_port: up.port(),
            },
            ca,
        ));
        Some(child)
    } else {
        None
    };

    if args.only.contains(&Part::KeepAlive) {
        keep_alive_table(&args, &routes, boundary_pid).await?;
    }
    if args.only.contains(&Part::Bulk) {
        bulk_table(&args, &routes, boundary_pid).await?;
    }
    if args.only.contains(&Part::Idle) {
        let per_conn = idle_memory(&routes[2].1, &boundary_ca, boundary_pid, args.idle).await?;
        println!(
            "Idle connections: {} through the jail socket, {per_conn:.1} KiB of proxy memory each ({TARGET_IDLE})",
            args.idle
        );
    }
    if args.only.contains(&Part::FirstRequest) {
        first_request_table(&args, &dir, &upstream_ca.pem_path, up.port()).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

type Routes = [(&'static str, Route, PathBuf)];

/// The target of a route's row: intercepted, relayed uninspected, or none (direct, squid).
fn target(route: &Route, intercepted: &'static str) -> &'static str {
    match route {
        Route::Direct(_) => "baseline",
        Route::Relay { name, .. } if *name != NAME => TARGET_RELAY,
        Route::Relay { .. } | Route::Connect { .. } => intercepted,
    }
}

/// The median of some figures (the middle one, or the lower middle).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

async fn keep_alive_table(args: &Args, routes: &Routes, boundary_pid: u32) -> anyhow::Result<()> {
    println!(
        "HTTPS keep-alive, {} connections, {} s per run, 2-byte responses; medians of {} rounds, \
         each round running every route in turn (ratios are taken within a round):",
        args.connections, args.seconds, args.rounds
    );
    let mut runs: Vec<Vec<KeepAlive>> = routes.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds {
        for (i, (name, route, ca)) in routes.iter().enumerate() {
            let cpu_before = cpu_seconds(boundary_pid)?;
            let mut r = keep_alive(route, ca, args.connections, args.seconds)
                .await
                .with_context(|| format!("keep-alive via {name}"))?;
            // The proxy's CPU per request: steadier than the rates on a busy machine.
            let requests = r.rps * args.seconds as f64;
            if requests > 0.0 {
                r.proxy_cpu_us = (cpu_seconds(boundary_pid)? - cpu_before) * 1e6 / requests;
            }
            runs[i].push(r);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (i, (name, route, _)) in routes.iter().enumerate() {
        let of = |f: &dyn Fn(&KeepAlive, &KeepAlive) -> f64| {
            median(runs[i].iter().zip(&runs[0]).map(|(r, d)| f(r, d)).collect())
        };
        let cpu = if name.starts_with("direct") || name.contains("squid") {
            String::new()
        } else {
            format!("  proxy CPU {:5.1} µs/req", of(&|r, _| r.proxy_cpu_us))
        };
        println!(
            "  {name:26} {:9.0} req/s ({:5.1}% of direct)  p50 {:7.3} ms  p99 {:7.3} ms  added p50 {:+.3} ms  added p99 {:+.3} ms{cpu}  ({})",
            of(&|r, _| r.rps),
            of(&|r, d| r.rps / d.rps * 100.0),
            of(&|r, _| ms(r.p50)),
            of(&|r, _| ms(r.p99)),
            of(&|r, d| ms(r.p50) - ms(d.p50)),
            of(&|r, d| ms(r.p99) - ms(d.p99)),
            if name.contains("squid") {
                "comparison"
            } else {
                target(route, TARGET_KEEP_ALIVE)
            },
        );
    }
    Ok(())
}

async fn bulk_table(args: &Args, routes: &Routes, boundary_pid: u32) -> anyhow::Result<()> {
    println!(
        "Bulk download of {} MiB (all processes share the machine's cores); medians of {} rounds:",
        args.bulk >> 20,
        args.rounds
    );
    let routes: Vec<_> = routes
        .iter()
        .filter(|(n, ..)| !n.contains("squid"))
        .collect();
    let mut runs: Vec<Vec<(f64, f64)>> = routes.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds {
        for (i, (name, route, ca)) in routes.iter().enumerate() {
            let cpu_before = cpu_seconds(boundary_pid)?;
            let mbps = bulk(route, ca, args.bulk)
                .await
                .with_context(|| format!("bulk via {name}"))?;
            runs[i].push((mbps, cpu_seconds(boundary_pid)? - cpu_before));
        }
    }
    for (i, (name, route, _)) in routes.iter().enumerate() {
        let mbps = median(runs[i].iter().map(|r| r.0).collect());
        let ratio = median(
            runs[i]
                .iter()
                .zip(&runs[0])
                .map(|(r, d)| r.0 / d.0 * 100.0)
                .collect(),
        );
        let cpu = median(runs[i].iter().map(|r| r.1).collect());
        let per_core = if cpu > 0.0 {
            format!(
                "; proxy CPU {cpu:.2} s = {:.0} MiB/s per proxy core",
                (args.bulk >> 20) as f64 / cpu
            )
        } else {
            String::new()
        };
        println!(
            "  {name:26} {mbps:8.0} MiB/s ({ratio:5.1}% of direct){per_core}  ({})",
            target(route, TARGET_BULK)
        );
    }
    Ok(())
}

/// One HTTPS GET on a new connection through `route`, answered and read: seconds.
async fn one_request(route: &Route, tls: &tokio_rustls::TlsConnector) -> anyhow::Result<f64> {
    let began = Instant::now();
    let mut sender = session(route, tls).await?;
    let response = sender.send_request(get("/")).await?;
    response.into_body().collect().await?;
    Ok(began.elapsed().as_secs_f64())
}

/// What a jailed command's first request pays for the proxy's one-time work (seeding its
/// random-number generator, the destination's first leaf certificate, the first upstream
/// connection): each of `--first-starts` fresh sidecars answers one intercepted request (CONNECT,
/// TLS on both sides, a GET), then a second one on a new connection.
async fn first_request_table(
    args: &Args,
    dir: &Path,
    upstream_ca: &Path,
    upstream_port: u16,
) -> anyhow::Result<()> {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for start in 0..args.first_starts {
        let dir = dir.join(format!("first-{start}"));
        std::fs::create_dir_all(&dir)?;
        let (child, explicit, _, ca) = start_boundary(
            &args.boundary,
            &dir,
            upstream_ca,
            args.boundary_workers,
            upstream_port,
        )
        .await?;
        let route = Route::Connect {
            proxy: explicit,
            upstream_port,
        };
        let tls = tls_client(&ca)?;
        first.push(one_request(&route, &tls).await.context("first request")?);
        second.push(one_request(&route, &tls).await.context("second request")?);
        drop(child);
    }
    println!(
        "First intercepted request of a fresh boundary sidecar (CONNECT, new connection), medians of {} starts: \
         first {:.2} ms, second {:.2} ms",
        args.first_starts,
        median(first) * 1e3,
        median(second) * 1e3
    );
    Ok(())
}

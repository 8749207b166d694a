//! Helpers for tests that run the real `boundary` binary against real namespaces, real HTTP(S)
//! servers on loopback and real clients (curl, python3) inside the jail.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// The binary under test, copied where any user can run it (the build directory may sit under a
/// home directory other users cannot enter).
pub fn boundary_bin() -> &'static str {
    static COPY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let source = env!("CARGO_BIN_EXE_boundary");
        let meta = std::fs::metadata(source).unwrap();
        // One copy per build, shared by the test processes (renamed into place atomically).
        let dir = std::env::temp_dir().join("boundary-test-bin");
        std::fs::create_dir_all(&dir).unwrap();
        // Another user's earlier run may own it: then it only has to let everyone in.
        if std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .is_err()
        {
            let mode = std::fs::metadata(&dir).unwrap().mode();
            assert_eq!(mode & 0o005, 0o005, "{} is not open to all", dir.display());
        }
        let path = dir.join(format!("boundary-{}-{}", meta.mtime(), meta.size()));
        if !path.exists() {
            let tmp = dir.join(format!(".copy-{}", std::process::id()));
            std::fs::copy(source, &tmp).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            remove_stale_copies(&dir, &path);
        }
        path.to_string_lossy().into_owned()
    })
}

/// Copies of earlier builds (each is the size of a debug binary, ~160 MB) once no test run can
/// still use them: older than an hour.
fn remove_stale_copies(dir: &Path, current: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_hours(1));
        if stale && entry.path() != current {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Tests that need root (namespaces for other users, privileged tiers) fail loudly without it.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (run the suite as root, as tests/scripts/test-all.sh does)"
    );
}

/// Who runs `boundary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// The test's own user (root in CI).
    Root,
    /// uid/gid 65534 with no capabilities.
    Nobody,
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "boundary-test-{tag}-{}-{}",
            std::process::id(),
            rand_u32()
        ));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    u32::try_from(h.finish() & u64::from(u32::MAX)).unwrap_or_default()
}

/// A `boundary` command as `who`.
pub fn boundary(who: As) -> tokio::process::Command {
    let mut cmd = match who {
        As::Root => tokio::process::Command::new(boundary_bin()),
        As::Nobody => {
            // setpriv drops to uid/gid 65534 and clears supplementary groups; changing uid away
            // from 0 clears every capability set but the bounding one, as for any user.
            let mut c = tokio::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                boundary_bin(),
            ]);
            c
        }
    };
    cmd.current_dir("/")
        .env_remove("BOUNDARY_TIER")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env("BOUNDARY_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs to completion (30 s limit).
pub async fn output(mut cmd: tokio::process::Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Ok(out) => out.expect("spawning boundary"),
        Err(tokio::time::error::Elapsed { .. }) => {
            panic!("boundary did not finish within 30 s: {cmd:?}")
        }
    }
}

/// `boundary run ARGS -- sh -c SCRIPT` as `who`.
pub async fn jailed(who: As, args: &[&str], script: &str) -> Output {
    let mut cmd = boundary(who);
    cmd.arg("run")
        .args(args)
        .arg("--")
        .args(["sh", "-c", script]);
    output(cmd).await
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[allow(unused_imports)]
pub use boundary_test_kit::{Alpn, TestCa, TestServer};

/// Values of `/proc/<pid>/status` capability and `no_new_privs` lines printed by the jailed
/// command.
pub fn status_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .map(|v| v.trim_start_matches(':').trim())
    })
}

/// A policy file in the ConfigMap layout: `policy.json -> ..data/policy.json`, `..data -> ..v1`.
pub struct PolicyDir {
    pub dir: TempDir,
    version: u32,
}

impl PolicyDir {
    pub fn new(policy: &serde_json::Value) -> PolicyDir {
        let mut p = PolicyDir {
            dir: TempDir::new("policy"),
            version: 0,
        };
        p.publish(policy);
        std::os::unix::fs::symlink("..data/policy.json", p.dir.path().join("policy.json")).unwrap();
        p
    }

    /// Atomic swap, as the kubelet does: write a new versioned dir, repoint `..data`.
    pub fn publish(&mut self, policy: &serde_json::Value) {
        self.version += 1;
        let v = self.dir.path().join(format!("..v{}", self.version));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("policy.json"), serde_json::to_vec(policy).unwrap()).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{}", self.version), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("policy.json")
    }

    /// What the kubelet does when an optional ConfigMap is deleted: `..data` points to an
    /// empty version and the key's symlink is removed.
    pub fn delete(&mut self) {
        self.version += 1;
        let v = self.dir.path().join(format!("..v{}", self.version));
        std::fs::create_dir(&v).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{}", self.version), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        std::fs::remove_file(self.path()).unwrap();
    }

    /// The ConfigMap is back: the key's symlink again, to a new version.
    pub fn restore(&mut self, policy: &serde_json::Value) {
        self.publish(policy);
        std::os::unix::fs::symlink("..data/policy.json", self.path()).unwrap();
    }
}

pub fn compiled(allow: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "namespace": "agents",
        "policies": [{"name": "agent-policy", "podSelector": {}, "allow": allow}]
    })
}

/// A running `boundary sidecar` with its socket, CA, metrics and explicit-proxy ports, and its
/// audit trail (standard output) collected.
pub struct Sidecar {
    pub socket: PathBuf,
    pub ca_pem: String,
    pub metrics: SocketAddr,
    pub explicit: SocketAddr,
    pub policy: PolicyDir,
    pub pid: i32,
    args: Vec<String>,
    audit: Arc<std::sync::Mutex<Vec<String>>>,
    child: tokio::process::Child,
    _dir: TempDir,
}

fn free_port() -> SocketAddr {
    boundary_test_kit::free_port().unwrap()
}

impl Sidecar {
    /// Starts a sidecar enforcing `policy` (compiled-policy JSON) with extra flags.
    pub async fn start(policy: &serde_json::Value, args: &[&str]) -> Sidecar {
        let dir = TempDir::new("sidecar");
        let socket = dir.path().join("proxy.sock");
        let policy = PolicyDir::new(policy);
        // A free port can be taken by another test between our probe and the sidecar's bind:
        // then the sidecar exits ("Address already in use") and is started on other ports.
        for attempt in 1.. {
            let (metrics, explicit) = (free_port(), free_port());
            let mut all: Vec<String> = [
                "sidecar",
                "--socket",
                socket.to_str().unwrap(),
                "--policy-file",
                policy.path().to_str().unwrap(),
                "--metrics-addr",
                &metrics.to_string(),
                "--explicit-proxy",
                &explicit.to_string(),
            ]
            .iter()
            .map(ToString::to_string)
            .collect();
            all.extend(args.iter().map(ToString::to_string));
            let audit = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (mut child, pid, ca_pem) = Self::spawn(&all, &socket, metrics, &audit).await;
            if attempt < 5 && child.try_wait().unwrap().is_some() {
                let _ = std::fs::remove_file(&socket);
                let _ = std::fs::remove_file(socket.with_file_name("ca.crt"));
                continue;
            }
            assert!(!ca_pem.is_empty(), "the sidecar wrote no CA");
            return Sidecar {
                socket,
                ca_pem,
                metrics,
                explicit,
                policy,
                pid,
                args: all,
                audit,
                child,
                _dir: dir,
            };
        }
        unreachable!("the loop returns")
    }

    /// A sidecar enforcing `policy` whose upstreams are test servers on loopback: each of `names`
    /// resolves to 127.0.0.1, and `ca` (when given) is trusted for their certificates. `extra`:
    /// more flags.
    pub async fn for_upstream(
        policy: &serde_json::Value,
        names: &[&str],
        ca: Option<&TestCa>,
        extra: &[&str],
    ) -> Sidecar {
        let mut args: Vec<String> = names
            .iter()
            .flat_map(|n| ["--resolve".to_owned(), format!("{n}=127.0.0.1")])
            .collect();
        if let Some(ca) = ca {
            args.push("--upstream-ca".into());
            args.push(ca.pem_path.to_str().unwrap().to_owned());
        }
        args.extend(extra.iter().map(ToString::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Sidecar::start(policy, &args).await
    }

    async fn spawn(
        args: &[String],
        socket: &Path,
        metrics: SocketAddr,
        audit: &Arc<std::sync::Mutex<Vec<String>>>,
    ) -> (tokio::process::Child, i32, String) {
        let mut cmd = boundary(As::Root);
        cmd.args(args).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let pid = i32::try_from(child.id().unwrap()).unwrap();
        let lines = audit.clone();
        let stdout = child.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut reader = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        let ca = socket.with_file_name("ca.crt");
        for _ in 0..200 {
            // Ready, or gone (the caller looks at the exit).
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if socket.exists() && ca.exists() && std::net::TcpStream::connect(metrics).is_ok() {
                // Connected to the metrics port: the sidecar's, unless another process holds it
                // and the sidecar is about to exit for that.
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Empty when the sidecar exited before writing it (the callers check).
        let ca_pem = std::fs::read_to_string(&ca).unwrap_or_default();
        (child, pid, ca_pem)
    }

    /// Kills the sidecar (SIGKILL, as a crash) and starts it again with the same socket, policy,
    /// ports and flags, as the kubelet restarts a container.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.start_again().await;
    }

    /// Kills the sidecar (SIGKILL, as a crash or an OOM kill); its socket file stays.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
        let _ = std::fs::remove_file(self.socket.with_file_name("ca.crt"));
    }

    /// Starts a killed sidecar again with the same socket, policy, ports and flags, as the
    /// kubelet restarts a container.
    pub async fn start_again(&mut self) {
        let (child, pid, ca_pem) =
            Self::spawn(&self.args, &self.socket, self.metrics, &self.audit).await;
        assert!(!ca_pem.is_empty(), "the restarted sidecar wrote no CA");
        self.child = child;
        self.pid = pid;
        self.ca_pem = ca_pem;
    }

    /// A connection as the jail's forwarder makes it: to `name` (a synthetic address) on `port`.
    pub async fn connect(&self, name: &str, port: u16) -> tokio::net::UnixStream {
        let header = format!(
            "BOUNDARY1 {}\n",
            serde_json::json!({"dst": format!("198.18.0.9:{port}"), "name": name, "container": "agent", "tier": "userns"})
        );
        let mut stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, header.as_bytes())
            .await
            .unwrap();
        stream
    }

    /// A connection to a raw IP (no synthetic name), as a client that resolved a name itself.
    pub async fn connect_ip(&self, ip: &str, port: u16) -> tokio::net::UnixStream {
        let header = format!(
            "BOUNDARY1 {}\n",
            serde_json::json!({"dst": format!("{ip}:{port}")})
        );
        let mut stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, header.as_bytes())
            .await
            .unwrap();
        stream
    }

    /// A TLS client trusting the proxy's CA; ALPN h2 + http/1.1 or http/1.1 only.
    pub fn tls(&self, h2: bool) -> tokio_rustls::TlsConnector {
        let alpn = if h2 { Alpn::H2AndHttp1 } else { Alpn::Http1 };
        boundary_test_kit::tls_connector(&self.ca_pem, alpn).unwrap()
    }

    /// Audit records so far (waits a moment for the writer).
    pub async fn audit(&self) -> Vec<serde_json::Value> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.audit
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The sidecar's exit status if it exits within `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(Result::unwrap)
    }

    /// Whether the sidecar process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `GET /status` of the metrics listener, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.metrics, "/status").await.unwrap();
        assert_eq!(code, 200, "{body}");
        // Whatever the sidecar's state, the operator's type reads it.
        if let Err(e) = serde_json::from_str::<boundary_api::enforcement::SidecarStatus>(&body) {
            panic!("the operator cannot read /status: {e}: {body}");
        }
        serde_json::from_str(&body).unwrap()
    }

    /// The file the sidecar wrote its CA to, for a client's `--cacert`.
    pub fn ca_file(&self) -> PathBuf {
        self.socket.with_file_name("ca.crt")
    }

    /// `curl` arguments to go through the sidecar's explicit proxy trusting its CA.
    pub fn curl_through(&self) -> Vec<String> {
        vec![
            "-x".into(),
            format!("http://{}", self.explicit),
            "--cacert".into(),
            self.ca_file().to_string_lossy().into_owned(),
        ]
    }

    /// The sidecar's peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status_value(&status, "VmHWM")
            .unwrap()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap()
    }
}

/// `GET path` with a real HTTP/1.1 client (hyper); (status, body), or why it failed.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| "no response within 10 s".to_owned())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What one curl run printed.
#[derive(Debug)]
pub struct Curl {
    /// curl's exit code (0: it got an answer, whatever its status).
    pub code: i32,
    /// The answer's body.
    pub body: String,
    /// The `-w` line printed after the body.
    pub written: String,
    /// curl's own messages (`-sS`: errors only).
    pub stderr: String,
}

/// Runs curl (Debian 12's 7.88) with `args`, the URL among them, printing `write_out` on a line
/// after the body.
pub async fn curl<S: AsRef<std::ffi::OsStr>>(args: &[S], write_out: &str) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-w", &format!("\n{write_out}")])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, written) = text.rsplit_once('\n').unwrap_or(("", &text));
    Curl {
        code: out.status.code().unwrap_or(-1),
        body: body.to_owned(),
        written: written.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

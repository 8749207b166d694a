//! `boundary run -- CMD`: jail the command, serve its only way out, exit with its exit code.
//!
//! Order matters: everything that forks (the jail) happens while the process is still
//! single-threaded; the async runtime (forwarder, DNS, proxy) starts afterwards.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_api::Tier;
use boundary_api::contract::env as contract_env;
use boundary_api::contract::paths;

use crate::config::{RunArgs, RunSettings, TierChoice};
use crate::forwarder::{Forwarder, Target};
use crate::inbound;
use crate::runtime::Workers;
use boundary_jail::dns::NameTable;
use boundary_jail::landlock_tier::{self, LandlockPlan};
use boundary_jail::mounts::{
    BUNDLE_FILE, CA_FILE, JAVA_STORE_FILE, MountPlan, RESOLV_CONF, RESOLV_FILE,
};
use boundary_jail::{self as jail, EXIT_SETUP_FAILED, JailError, JailPlan, signals};
use boundary_proxy::audit::Identity;
use boundary_proxy::credentials::CredentialSet;
use boundary_proxy::credentials::values::ValueSource;
use boundary_proxy::policy::{PolicyStore, Source};
use boundary_proxy::session::{Hello, JailOutcome};
use boundary_proxy::tls::CertAuthority;
use boundary_proxy::{Proxy, ProxyConfig};

/// Exit code for invalid flags or configuration (nothing was started).
pub const EXIT_USAGE: i32 = 2;

/// Variables that make common tools trust the proxy's CA, pointing at the trust bundle.
const BUNDLE_VARS: [&str; 9] = [
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "DENO_CERT",
    "NIX_SSL_CERT_FILE",
];
/// Proxy variables: set for the landlock tier, removed in namespaced tiers (where every
/// connection is intercepted anyway and a proxy address would only be one more destination).
const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

enum Started {
    Jail(jail::Spawned),
    Landlock {
        pid: nix::unistd::Pid,
        listener: Option<TcpListener>,
    },
}

/// Runs `boundary run`; returns the process exit code.
pub fn run(args: &RunArgs) -> i32 {
    if let Some(tier) = std::env::var_os(contract_env::JAILED).filter(|t| !t.is_empty()) {
        let container =
            std::env::var(contract_env::CONTAINER_NAME).unwrap_or_else(|_| "(unnamed)".to_owned());
        let command: Vec<String> = args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        eprintln!(
            "boundary: already jailed (tier {}, container {container}): boundary run cannot start a jail inside a jail. \
             Run the command directly: {}",
            tier.to_string_lossy(),
            command.join(" ")
        );
        return EXIT_SETUP_FAILED;
    }
    let settings = match args.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("boundary: {e}");
            return EXIT_USAGE;
        }
    };
    if let Err(e) = boundary_telemetry::init(&settings.log) {
        eprintln!("boundary: {e}");
        return EXIT_USAGE;
    }
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    match prepare_and_run(settings) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("boundary: {e}");
            EXIT_SETUP_FAILED
        }
    }
}

fn prepare_and_run(mut settings: RunSettings) -> Result<i32, JailError> {
    let what = match &settings.audit {
        boundary_proxy::audit::Sink::File(path) => {
            format!("opening the audit log {}", path.display())
        }
        _ => "opening the audit log".to_owned(),
    };
    settings.audit = settings
        .audit
        .clone()
        .open()
        .map_err(|e| JailError::other(&what, e))?;
    let session = boundary_proxy::session_id();
    let workdir = Workdir::create()?;
    // Looked up once: the jail's mounts, the landlock tier's options and the files all need it.
    let java_stores = jdk_trust_stores();
    let mut assets = Assets::default();
    signals::block_forwarded().map_err(|e| JailError::other("blocking signals", e))?;
    let result = {
        let java = !java_stores.is_empty();
        let mut prepare = || assets.prepare(&settings, &session, &workdir, java);
        start_jail(&settings, &workdir, &java_stores, &mut prepare)
    };
    let (started, tier) = match result {
        Ok(started) => started,
        Err(e) => {
            if let Some(socket) = &settings.proxy_socket {
                let hello = Hello {
                    container: settings.container.clone(),
                    tier: match settings.tier {
                        TierChoice::Only(t) => Some(t),
                        TierChoice::Auto => None,
                    },
                    jail: JailOutcome::Failed,
                    error: Some(e.to_string()),
                };
                crate::session::announce_failure(socket, &hello, EXIT_SETUP_FAILED);
            }
            return Err(e);
        }
    };
    // Now that the command runs (the jail no longer waits for this process), clean up after
    // runs that were killed.
    for parent in workdir_parents() {
        remove_stale(&parent);
    }

    let runtime = crate::runtime::build(Workers::One)
        .map_err(|e| JailError::other("starting the runtime", e))?;
    let code = runtime.block_on(serve(settings, session, assets.ca, started, tier))?;
    drop(workdir);
    // The command has ended and the audit trail is flushed: the process exits now, without
    // waiting for idle worker threads to be joined one by one.
    runtime.shutdown_background();
    Ok(code)
}

/// The proxy CA (standalone) or the sidecar's, and the jail's files, made once, when the first
/// jail attempt needs them: after its init is created, so that both proceed at once.
#[derive(Default)]
struct Assets {
    ca: Option<Arc<CertAuthority>>,
    written: bool,
}

impl Assets {
    fn prepare(
        &mut self,
        settings: &RunSettings,
        session: &str,
        workdir: &Workdir,
        java: bool,
    ) -> Result<(), JailError> {
        if self.written {
            return Ok(());
        }
        let ca = &mut self.ca;
        workdir.write_files(java, || match &settings.proxy_socket {
            None => {
                let made = CertAuthority::generate(session)
                    .map_err(|e| JailError::other("creating the proxy CA", e))?;
                let pem = made.ca_pem().to_owned();
                *ca = Some(Arc::new(made));
                Ok(pem)
            }
            Some(socket) => wait_for_sidecar(socket, settings.sidecar_wait),
        })?;
        self.written = true;
        Ok(())
    }
}

fn start_jail(
    settings: &RunSettings,
    workdir: &Workdir,
    java_stores: &[PathBuf],
    prepare: &mut dyn FnMut() -> Result<(), JailError>,
) -> Result<(Started, Tier), JailError> {
    let mut why_not = Vec::new();
    for tier in settings.tier.candidates() {
        let result = match tier {
            Tier::Userns | Tier::PrivilegedNetns => {
                let mut env = ca_env(&workdir.path);
                env.extend(identity_env(settings, tier));
                env.extend(settings.credentials.env.iter().cloned());
                let mut env_remove: Vec<OsString> = PROXY_VARS.iter().map(OsString::from).collect();
                env_remove.extend(settings.credentials.env_remove.iter().cloned());
                let plan = JailPlan {
                    tier,
                    command: settings.command.clone(),
                    env,
                    env_remove,
                    mounts: MountPlan {
                        workdir: workdir.path.clone(),
                        new_proc: true,
                        supervisor_pid: 0,
                        hide: settings
                            .proxy_socket
                            .iter()
                            .filter_map(|s| s.parent().map(Path::to_path_buf))
                            .collect(),
                        trust_stores: boundary_proxy::trust::TRUST_STORE_FILES
                            .iter()
                            .map(PathBuf::from)
                            .collect(),
                        java_trust_stores: java_stores.to_vec(),
                    },
                    pod_local_ports: settings.pod_local_ports.clone(),
                };
                jail::spawn(&plan, prepare).map(Started::Jail)
            }
            Tier::Landlock => prepare()
                .and_then(|()| start_landlock(settings, &workdir.path, !java_stores.is_empty())),
        };
        match result {
            Ok(started) => {
                if settings.tier == TierChoice::Auto && !why_not.is_empty() {
                    tracing::warn!(tier = %tier, "using tier {tier}; better tiers did not work here:\n{}", why_not.join("\n"));
                }
                if tier == Tier::Landlock {
                    tracing::warn!(
                        "tier landlock: weaker isolation. Landlock restricts TCP connect by port only, and only tools \
                         that honour HTTP(S)_PROXY reach the proxy; every audit record is marked so"
                    );
                }
                return Ok((started, tier));
            }
            Err(e) => why_not.push(format!("- {tier}: {e}")),
        }
    }
    Err(match settings.tier {
        TierChoice::Only(_) => {
            JailError::Other(why_not.join("\n").trim_start_matches("- ").to_owned())
        }
        TierChoice::Auto => JailError::NoTierWorks(why_not),
    })
}

fn start_landlock(
    settings: &RunSettings,
    workdir: &Path,
    java: bool,
) -> Result<Started, JailError> {
    let (port, listener) = match (&settings.proxy_socket, settings.proxy_port) {
        (Some(_), Some(port)) => (port, None),
        (Some(_), None) => {
            return Err(JailError::Other(
                "the landlock tier with a sidecar needs --proxy-port (the sidecar's explicit proxy port)".into(),
            ));
        }
        (None, port) => {
            let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
                .map_err(|e| JailError::other("binding the explicit proxy port", e))?;
            let port = listener
                .local_addr()
                .map_err(|e| JailError::other("proxy port", e))?
                .port();
            (port, Some(listener))
        }
    };
    let proxy_url = format!("http://127.0.0.1:{port}");
    let mut env = ca_env(workdir);
    env.extend(identity_env(settings, Tier::Landlock));
    env.extend(settings.credentials.env.iter().cloned());
    // The landlock tier's exec removes nothing: a real value without a placeholder is emptied.
    env.extend(
        settings
            .credentials
            .env_remove
            .iter()
            .map(|var| (var.clone(), OsString::new())),
    );
    for var in PROXY_VARS {
        let value = if var.eq_ignore_ascii_case("no_proxy") {
            String::new()
        } else {
            proxy_url.clone()
        };
        env.push((var.into(), value.into()));
    }
    if java {
        env.push(java_tool_options(
            workdir,
            port,
            std::env::var_os(boundary_api::contract::java_env::JAVA_TOOL_OPTIONS),
        ));
    }
    let plan = LandlockPlan {
        command: settings.command.clone(),
        env,
        proxy_port: port,
    };
    let pid = landlock_tier::spawn(&plan)?;
    Ok(Started::Landlock { pid, listener })
}

async fn serve(
    settings: RunSettings,
    session: String,
    ca: Option<Arc<CertAuthority>>,
    started: Started,
    tier: Tier,
) -> Result<i32, JailError> {
    let pid = match &started {
        Started::Jail(spawned) => spawned.init,
        Started::Landlock { pid, .. } => *pid,
    };
    let refusals = Arc::new(crate::session::Refusals::default());
    let sidecar = settings.proxy_socket.clone().map(|socket| {
        crate::session::start(
            socket,
            Hello {
                container: settings.container.clone(),
                tier: Some(tier),
                jail: JailOutcome::Started,
                error: None,
            },
            refusals.clone(),
        )
    });
    let result = serve_jail(
        settings,
        session,
        ca,
        started,
        tier,
        sidecar.as_ref().map(|s| (s.session(), refusals.clone())),
    )
    .await;
    if result.is_err() {
        // Never leave the jailed command running without its proxy.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    if let Some(sidecar) = sidecar {
        sidecar
            .finish(*result.as_ref().unwrap_or(&EXIT_SETUP_FAILED))
            .await;
    }
    result
}

async fn serve_jail(
    settings: RunSettings,
    session: String,
    ca: Option<Arc<CertAuthority>>,
    mut started: Started,
    tier: Tier,
    sidecar: Option<(crate::session::Session, Arc<crate::session::Refusals>)>,
) -> Result<i32, JailError> {
    let proxy = match ca {
        Some(ca) => Some(
            Proxy::start(ProxyConfig {
                session,
                identity: Identity::default(),
                tier: Some(tier),
                policy: PolicyStore::load(Source::Static(Arc::new(settings.rules.clone())))
                    .map_err(|e| JailError::other("loading rules", e))?
                    .with_credentials(CredentialSet::new(
                        [(None, settings.credentials.credentials.as_slice())],
                        Some(&settings.credentials.nonce),
                    )),
                upstream_cas: settings.upstream_cas.clone(),
                resolve: settings.resolve.clone(),
                upstream_dns: settings.upstream_dns,
                audit: settings.audit.clone(),
                audit_options: settings.audit_options,
                ca,
                upstream_timeout: settings.upstream_timeout,
                credential_values: ValueSource::Static(settings.credentials.values.clone()),
            })
            .map_err(|e| JailError::other("starting the proxy", e))?,
        ),
        None => None,
    };
    // Wait (and forward signals) from the start: a short command must not wait for the proxy.
    let exit = match &mut started {
        Started::Jail(spawned) => wait_for(spawned.init, spawned.exit_report.take()),
        Started::Landlock { pid, .. } => wait_for(*pid, None),
    };
    let code = match started {
        Started::Jail(spawned) => {
            let (sidecar, refusals) = sidecar.unzip();
            let target = match (&proxy, &settings.proxy_socket, refusals) {
                (Some(p), _, _) => Target::Local(p.clone()),
                (None, Some(socket), Some(refusals)) => Target::Socket(socket.clone(), refusals),
                (None, _, _) => unreachable!("either a local proxy or a sidecar"),
            };
            let forwarder = Arc::new(Forwarder {
                names: Arc::new(NameTable::default()),
                target,
                container: settings.container.clone(),
                tier,
            });
            if let Err(e) = forwarder.serve(spawned.listeners) {
                let _ = nix::sys::signal::kill(spawned.init, nix::sys::signal::Signal::SIGKILL);
                return Err(JailError::other("serving the jail's sockets", e));
            }
            if !settings.inbound_ports.is_empty() {
                let recorder = match (&proxy, sidecar) {
                    (Some(p), _) => inbound::Recorder::Local(p.clone()),
                    (None, Some(s)) => inbound::Recorder::Sidecar(s),
                    (None, None) => unreachable!("either a local proxy or a sidecar"),
                };
                let listeners = inbound::bind_all(&settings.inbound_ports)
                    .map_err(|e| JailError::other("serving the inbound ports", e))?;
                inbound::serve(
                    listeners,
                    Arc::new(spawned.sockets),
                    recorder,
                    settings.container.clone(),
                    tier,
                )
                .map_err(|e| JailError::other("serving the inbound ports", e))?;
            }
            tracing::debug!(tier = %spawned.tier, ipv6 = spawned.ipv6, "jail up");
            if !spawned.mounts.private_proc {
                tracing::info!(
                    "the runtime masks /proc, so the jail shares this container's /proc (boundary run's own entry is hidden)"
                );
            }
            exit.await
        }
        Started::Landlock { listener, .. } => {
            if !settings.inbound_ports.is_empty() {
                tracing::info!(
                    "tier landlock shares this network namespace: servers of the command are reachable as they bind, \
                     --inbound-port has nothing to relay"
                );
            }
            if let (Some(p), Some(l)) = (&proxy, listener) {
                l.set_nonblocking(true)
                    .map_err(|e| JailError::other("proxy listener", e))?;
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|e| JailError::other("proxy listener", e))?;
                tokio::spawn(p.clone().run_explicit(l, Some(Tier::Landlock)));
            }
            exit.await
        }
    };
    if let Some(p) = proxy {
        p.flush().await;
    }
    Ok(code)
}

/// Waits for the jail's top process on a thread of its own (it also forwards signals). With
/// `exit_report` (a namespaced jail's init), the command's exit code as soon as the init
/// reports it, before the init has torn the jail down.
fn wait_for(
    pid: nix::unistd::Pid,
    exit_report: Option<std::os::fd::OwnedFd>,
) -> impl std::future::Future<Output = i32> {
    use std::os::fd::AsFd as _;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let code = match &exit_report {
            Some(report) => signals::supervise_reported(pid, report.as_fd()),
            None => signals::supervise(pid, false),
        };
        let _ = tx.send(code);
    });
    async move { rx.await.unwrap_or(EXIT_SETUP_FAILED) }
}

fn identity_env(settings: &RunSettings, tier: Tier) -> Vec<(OsString, OsString)> {
    let mut env = vec![
        (contract_env::TIER.into(), OsString::from(tier.as_str())),
        // Only the jailed command has it: a nested `boundary run` refuses to start.
        (contract_env::JAILED.into(), OsString::from(tier.as_str())),
    ];
    if let Some(c) = &settings.container {
        env.push((contract_env::CONTAINER_NAME.into(), c.into()));
    }
    env
}

fn ca_env(workdir: &Path) -> Vec<(OsString, OsString)> {
    let bundle = workdir.join(BUNDLE_FILE);
    let mut env: Vec<(OsString, OsString)> = BUNDLE_VARS
        .iter()
        .map(|v| (OsString::from(v), bundle.clone().into_os_string()))
        .collect();
    env.push((
        "NODE_EXTRA_CA_CERTS".into(),
        workdir.join(CA_FILE).into_os_string(),
    ));
    env
}

/// The JDK trust stores (`cacerts`) on this filesystem, `$JAVA_HOME`'s included. None: no JVM
/// can run here, and the jail needs no Java store.
fn jdk_trust_stores() -> Vec<PathBuf> {
    boundary_proxy::trust::java_trust_stores(
        std::env::var_os(boundary_api::contract::java_env::JAVA_HOME)
            .as_deref()
            .map(Path::new),
    )
}

/// The landlock tier has no mount namespace to put the Java trust store over the JDKs'
/// `cacerts`, and JVMs ignore `HTTPS_PROXY`: `JAVA_TOOL_OPTIONS`, which every JVM reads (and
/// notes on standard error), names the store and the explicit proxy. The caller's options stay,
/// first.
fn java_tool_options(
    workdir: &Path,
    proxy_port: u16,
    caller: Option<OsString>,
) -> (OsString, OsString) {
    let store = workdir.join(JAVA_STORE_FILE);
    let mut value = caller.unwrap_or_default();
    if !value.is_empty() {
        value.push(" ");
    }
    value.push(format!(
        "-Djavax.net.ssl.trustStore={} -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort={proxy_port} \
         -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort={proxy_port}",
        store.display()
    ));
    (
        boundary_api::contract::java_env::JAVA_TOOL_OPTIONS.into(),
        value,
    )
}

/// In sidecar mode, waits until the sidecar has written its CA next to its socket.
fn wait_for_sidecar(socket: &Path, wait: Duration) -> Result<String, JailError> {
    let ca = socket.with_file_name(Path::new(paths::CA_CERT).file_name().unwrap_or_default());
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        if socket.exists()
            && let Ok(pem) = std::fs::read_to_string(&ca)
            && pem.contains("BEGIN CERTIFICATE")
        {
            return Ok(pem);
        }
        if Instant::now() > deadline {
            return Err(JailError::Other(format!(
                "the boundary sidecar is not ready: no socket at {} or no CA at {} after {} s. Check the sidecar \
                 container's logs (kubectl logs <pod> -c boundary)",
                socket.display(),
                ca.display(),
                wait.as_secs()
            )));
        }
        if !told {
            eprintln!(
                "boundary: waiting for the boundary sidecar at {} ...",
                socket.display()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The temporary directory for the jail's files, which namespaced tiers see read-only. Removed
/// when `boundary run` ends; a killed run's is removed by the next one.
struct Workdir {
    path: PathBuf,
}

impl Workdir {
    /// Creates an empty work directory in /dev/shm, else $TMPDIR (or /tmp). Memory first: its
    /// files (public certificates only) are made and removed on every start, and removing them
    /// from an ext4 `/tmp` took 0.19 ms of `boundary run`'s 2.5 ms (0.04 ms on tmpfs).
    fn create() -> Result<Workdir, JailError> {
        let mut last = String::new();
        for parent in workdir_parents() {
            let path = parent.join(format!(
                "boundary-{}-{}",
                std::process::id(),
                boundary_proxy::session_id()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Workdir { path }),
                Err(e) => last = format!("{}: {e}", path.display()),
            }
        }
        Err(JailError::Other(format!(
            "no writable directory for the jail's files (/dev/shm, $TMPDIR or /tmp): {last}"
        )))
    }

    /// Writes the jail's files: the trust bundle, the proxy's CA and `resolv.conf`, and with
    /// `java` (a JDK trust store was found) the Java store. The CA comes from `ca`.
    fn write_files(
        &self,
        java: bool,
        ca: impl FnOnce() -> Result<String, JailError>,
    ) -> Result<String, JailError> {
        fn fail(name: &'static str) -> impl Fn(std::io::Error) -> JailError {
            move |e| JailError::other(&format!("writing {name}"), e)
        }
        let bundle = self.path.join(BUNDLE_FILE);
        let pem = ca()?;
        // The Java store only where a JDK is installed: no JVM can run elsewhere. It is made from
        // the bundle, so the bundle is then made in memory; otherwise the kernel copies the roots.
        if java {
            let bundle_pem = boundary_proxy::trust::bundle(&pem);
            std::fs::write(&bundle, &bundle_pem).map_err(fail(BUNDLE_FILE))?;
            let java =
                boundary_proxy::trust::java_trust_store(&bundle_pem).map_err(JailError::Other)?;
            std::fs::write(self.path.join(JAVA_STORE_FILE), java).map_err(fail(JAVA_STORE_FILE))?;
        } else {
            boundary_proxy::trust::write_roots(&bundle).map_err(fail(BUNDLE_FILE))?;
            boundary_proxy::trust::append_ca(&bundle, &pem).map_err(fail(BUNDLE_FILE))?;
        }
        std::fs::write(self.path.join(CA_FILE), &pem).map_err(fail(CA_FILE))?;
        std::fs::write(self.path.join(RESOLV_FILE), RESOLV_CONF).map_err(fail(RESOLV_FILE))?;
        Ok(pem)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where work directories are made, in order of preference.
fn workdir_parents() -> [PathBuf; 2] {
    [PathBuf::from("/dev/shm"), std::env::temp_dir()]
}

/// Removes `boundary-<pid>-*` directories whose process is gone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("boundary-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive && entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

//! `boundary sidecar`: the policy proxy as a pod's jail-runtime sidecar. It listens on a unix
//! socket on the volume shared with the jailed containers, writes the CA certificate (and a
//! trust bundle) next to the socket, reads the compiled policy mounted from the namespace's
//! ConfigMap and reloads it when it changes, and writes the audit trail to standard output
//! (`kubectl logs <pod> -c boundary`).
//!
//! The CA's key stays out of the jails' reach: in memory, and with `--ca-dir` also in a
//! directory only the sidecar mounts, so that a sidecar the kubelet restarts (crash, OOM kill)
//! presents the CA the running jails trusted when they started. A start that finds traces of a
//! previous run (the kept CA, the jails' state file) is audited as `sidecar-restart`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boundary_api::contract::env as contract_env;
use boundary_api::contract::{boundary_env, exit_when, paths};
use boundary_telemetry::{LogArgs, LogFormat};
use clap::Args;

use crate::config::{ProxyArgs, parse_resolve, parse_upstream_dns};
use crate::runtime::Workers;
use boundary_proxy::audit::{Identity, Sink};
use boundary_proxy::credentials::values::ValueSource;
use boundary_proxy::jails::{ExitWhen, Jails};
use boundary_proxy::policy::{PolicyStore, Source};
use boundary_proxy::tls::{CaOrigin, CertAuthority};
use boundary_proxy::trust::builtin_roots_pem;
use boundary_proxy::{Proxy, ProxyConfig};

/// Flags of `boundary sidecar`.
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// Unix socket the jailed containers' forwarders connect to.
    #[arg(long, value_name = "PATH", env = contract_env::PROXY_SOCKET, default_value = paths::PROXY_SOCKET)]
    pub socket: PathBuf,
    /// The compiled policy (mounted from the namespace's ConfigMap).
    #[arg(long, value_name = "FILE", env = contract_env::POLICY_FILE, default_value = paths::POLICY_FILE)]
    pub policy_file: PathBuf,
    /// The pod's labels (downward API file), to pick the policies that select this pod.
    #[arg(long, value_name = "FILE", env = contract_env::LABELS_FILE)]
    pub labels_file: Option<PathBuf>,
    /// Explicit HTTP proxy address for landlock-tier containers.
    #[arg(long, value_name = "ADDR", env = contract_env::EXPLICIT_PROXY)]
    pub explicit_proxy: Option<SocketAddr>,
    /// Address of /metrics and /healthz.
    #[arg(long, value_name = "ADDR", env = contract_env::METRICS_ADDR)]
    pub metrics_addr: Option<SocketAddr>,
    /// Directory of extra upstream CAs: every file in it (PEM), e.g. the optional ConfigMap
    /// `agent-boundary-upstream-ca` the webhook mounts. Missing or empty: none.
    #[arg(long, value_name = "DIR", env = contract_env::UPSTREAM_CA_DIR)]
    pub upstream_ca_dir: Option<PathBuf>,
    /// Threads that serve connections: 1 (one agent's traffic) or more for a sidecar given the
    /// CPUs for heavy parallel traffic; 0 means one per CPU the container may use.
    #[arg(
        long,
        value_name = "N",
        env = boundary_env::WORKER_THREADS,
        default_value_t = 1
    )]
    pub worker_threads: usize,
    /// The pod's jailed containers, the ones `--exit-when` waits for.
    #[arg(
        long,
        value_name = "NAMES",
        env = contract_env::JAILED_CONTAINERS,
        value_delimiter = ','
    )]
    pub jailed_containers: Vec<String>,
    /// Exit by itself: never, all-exited (every jailed container ended once; pod restart
    /// policy Never) or all-succeeded (every one ended with 0; restart policy `OnFailure`).
    #[arg(long, value_name = "WHEN", env = contract_env::EXIT_WHEN, default_value = exit_when::NEVER)]
    pub exit_when: ExitWhen,
    /// Keep the proxy CA (key and certificate) in DIR and reuse it at the next start, so jails
    /// still running when the sidecar restarts keep trusting it. Give it a directory only the
    /// sidecar can read (the webhook mounts a memory-backed emptyDir). Unset: a new CA per start.
    #[arg(long, value_name = "DIR", env = contract_env::CA_DIR)]
    pub ca_dir: Option<PathBuf>,
    /// The credentials' real values: the namespace's credentials Secret mounted into the sidecar
    /// only, one `<policy>.<credential>` file each, re-read when it changes. Missing: no values
    /// (requests a credential is bound to are refused).
    #[arg(long, value_name = "DIR", env = contract_env::CREDENTIALS_DIR)]
    pub credentials_dir: Option<PathBuf>,
    /// The pod's placeholder nonce (the webhook's): the placeholders the jailed containers hold
    /// are made with it.
    #[arg(long, value_name = "NONCE", env = contract_env::PLACEHOLDER_NONCE)]
    pub placeholder_nonce: Option<String>,
    /// Settings shared with `boundary run`'s in-process proxy.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Diagnostics.
    #[command(flatten)]
    pub log: LogArgs,
}

/// How long the sidecar waits, once its exit condition holds, for connections still open (their
/// audit lines are written when they close).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the sidecar until SIGTERM or SIGINT.
pub fn run(args: &SidecarArgs) -> i32 {
    if let Err(e) = boundary_telemetry::init(&args.log.or_defaults("info", LogFormat::Json)) {
        eprintln!("boundary sidecar: {e}");
        return crate::run::EXIT_USAGE;
    }
    let expected: Vec<String> = args
        .jailed_containers
        .iter()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    if args.exit_when != ExitWhen::Never && expected.is_empty() {
        eprintln!(
            "boundary sidecar: {}={} needs {} (the pod's jailed container names, comma-separated)",
            contract_env::EXIT_WHEN,
            args.exit_when.as_str(),
            contract_env::JAILED_CONTAINERS
        );
        return crate::run::EXIT_USAGE;
    }
    let state_file = args
        .socket
        .parent()
        .map(|dir| dir.join(boundary_proxy::jails::STATE_FILE));
    let jails = Arc::new(Jails::new(args.exit_when, expected, state_file));
    let runtime = match crate::runtime::build(Workers::from_count(args.worker_threads)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("boundary sidecar: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(args, jails)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "boundary sidecar failed");
            1
        }
    }
}

async fn serve(args: &SidecarArgs, jails: Arc<Jails>) -> anyhow::Result<()> {
    let session = boundary_proxy::session_id();
    let (ca, ca_origin) = proxy_ca(args, &session)?;
    let ca = Arc::new(ca);
    let dir = args.socket.parent().unwrap_or(Path::new("/")).to_path_buf();
    std::fs::create_dir_all(&dir)?;
    write_atomically(&dir.join("ca.crt"), ca.ca_pem())?;
    let mut bundle = builtin_roots_pem();
    bundle.push_str(ca.ca_pem());
    write_atomically(&dir.join("ca-bundle.crt"), &bundle)?;

    let source = Source::File {
        policy: args.policy_file.clone(),
        labels: args.labels_file.clone(),
    };
    let nonce = placeholder_nonce(args)?;
    let policy = match PolicyStore::load(source.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "no usable policy yet: denying everything until one loads");
            PolicyStore::deny_all(source)
        }
    }
    .with_placeholder_nonce(nonce);
    let identity = Identity {
        pod: std::env::var(boundary_api::contract::env::POD_NAME).ok(),
        namespace: std::env::var(boundary_api::contract::env::POD_NAMESPACE).ok(),
    };
    if args.proxy.audit_max_bytes.is_some() && args.proxy.audit_file.is_none() {
        tracing::warn!(
            "--audit-max-bytes rotates an audit file only: the trail goes to standard output (give --audit-file to rotate)"
        );
    }
    let proxy = Proxy::start(ProxyConfig {
        session,
        identity,
        tier: None,
        policy,
        upstream_cas: upstream_cas(args)?,
        resolve: parse_resolve(&args.proxy.resolve)?,
        upstream_dns: parse_upstream_dns(args.proxy.upstream_dns.as_deref())?,
        audit: args
            .proxy
            .audit_file
            .clone()
            .map_or(Sink::Stdout, Sink::File),
        audit_options: args
            .proxy
            .audit_options(None, None, None)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ca,
        upstream_timeout: std::time::Duration::from_secs(args.proxy.upstream_timeout.max(1)),
        credential_values: args
            .credentials_dir
            .clone()
            .map_or(ValueSource::None, ValueSource::Dir),
    })?;
    tracing::info!(policies = ?proxy.rules_for(None).policies, "policy loaded");

    let _ = std::fs::remove_file(&args.socket);
    let listener = tokio::net::UnixListener::bind(&args.socket)?;
    // Jailed containers may run as any user.
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o666))?;
    let restored = report_start(args, &proxy, &ca_origin, &jails);
    tokio::spawn(proxy.clone().run_unix(listener, Some(jails.clone())));
    if restored {
        let jails = jails.clone();
        tokio::spawn(async move {
            tokio::time::sleep(boundary_proxy::jails::RECONNECT_GRACE).await;
            jails.expire_unclaimed();
        });
    }
    if let Some(addr) = args.explicit_proxy {
        let l = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(
            proxy
                .clone()
                .run_explicit(l, Some(boundary_api::Tier::Landlock)),
        );
    }
    if let Some(addr) = args.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(proxy.clone().run_metrics(l, Some(jails.clone())));
    }
    tracing::info!(socket = %args.socket.display(), "boundary sidecar ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = jails.until_done() => {
            tracing::info!(when = args.exit_when.as_str(), "every jailed container has ended: the sidecar exits");
            let deadline = tokio::time::Instant::now() + DRAIN;
            while proxy.metrics().active_connections() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    proxy.flush().await;
    Ok(())
}

/// `--placeholder-nonce`, checked; a warning when credentials come without it.
fn placeholder_nonce(args: &SidecarArgs) -> anyhow::Result<Option<String>> {
    let nonce = match args.placeholder_nonce.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) if boundary_api::credentials::is_nonce(n) => Some(n.to_owned()),
        Some(n) => anyhow::bail!(
            "{}={n:?} is not a placeholder nonce (16 characters of a-z and 2-7, as the webhook sets it)",
            contract_env::PLACEHOLDER_NONCE
        ),
    };
    if nonce.is_none() && args.credentials_dir.is_some() {
        tracing::warn!(
            "{} is not set: the jailed containers' credential placeholders cannot be recognised, \
             so requests carrying them are refused as leak attempts (headers are still set)",
            contract_env::PLACEHOLDER_NONCE
        );
    }
    Ok(nonce)
}

/// The CA: kept in `--ca-dir` (reused when usable), or a new one for this run only.
fn proxy_ca(args: &SidecarArgs, session: &str) -> anyhow::Result<(CertAuthority, CaOrigin)> {
    let (ca, origin) = match &args.ca_dir {
        Some(dir) => CertAuthority::load_or_generate(dir, session)?,
        None => (CertAuthority::generate(session)?, CaOrigin::Ephemeral),
    };
    if let CaOrigin::New {
        replaced: Some(why),
    } = &origin
    {
        tracing::warn!(reason = %why, "the kept proxy CA is unusable: replaced by a new one");
    }
    Ok((ca, origin))
}

/// Audits what this start found: traces of a previous run (`sidecar-restart`) and a missing
/// policy file. Takes over the previous run's jail states; returns whether there were any.
fn report_start(
    args: &SidecarArgs,
    proxy: &boundary_proxy::Proxy,
    ca_origin: &CaOrigin,
    jails: &Jails,
) -> bool {
    let restored_states = jails.state_file_exists();
    let restored = jails.restore();
    // A kept CA (usable or not) is a previous run's.
    let kept_ca = matches!(
        ca_origin,
        CaOrigin::Reused | CaOrigin::New { replaced: Some(_) }
    );
    if restored_states || kept_ca {
        record_restart(proxy, ca_origin, jails);
    }
    if proxy.policy_file_missing() {
        proxy.record_event(
            "policy-missing",
            None,
            None,
            serde_json::json!({
                "file": args.policy_file.display().to_string(),
                "policyHash": null,
                "kept": "deny-all",
            }),
        );
    }
    restored
}

/// Says in the log and the audit trail that this start follows an earlier run of the sidecar in
/// the same pod (the kubelet restarted the container): whether the CA the jails trust was kept,
/// and the jails' states as that run left them.
fn record_restart(proxy: &boundary_proxy::Proxy, ca: &CaOrigin, jails: &Jails) {
    let states = jails.reports();
    let replaced = match ca {
        CaOrigin::New { replaced } => replaced.clone(),
        _ => None,
    };
    if *ca == CaOrigin::Reused {
        tracing::info!(
            jails = states.len(),
            "the boundary sidecar restarted: the kept CA is reused, running jails keep working"
        );
    } else {
        tracing::warn!(
            ca = ca.as_str(),
            jails = states.len(),
            "the boundary sidecar restarted with a new CA: HTTPS requests of jails that are still running fail (unknown issuer) until their containers restart"
        );
    }
    proxy.record_event(
        "sidecar-restart",
        None,
        None,
        serde_json::json!({
            "ca": ca.as_str(),
            "ca_replaced": replaced,
            "jails": states,
        }),
    );
}

/// The upstream CA files: `--upstream-ca` and every file in `--upstream-ca-dir`.
fn upstream_cas(args: &SidecarArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = args.proxy.upstream_ca.clone();
    if let Some(dir) = &args.upstream_ca_dir {
        files.extend(files_in(dir).map_err(|e| {
            anyhow::anyhow!("reading the upstream CA directory {}: {e}", dir.display())
        })?);
    }
    Ok(files)
}

/// The files of a mounted ConfigMap or Secret directory, sorted: entries starting with `.` are
/// the kubelet's bookkeeping (`..data`, `..2024_...`), the keys are symlinks into it. A missing
/// directory holds no files (an optional ConfigMap that does not exist).
fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows the key's symlink.
        if std::fs::metadata(&path)?.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mounted_configmap_directory_yields_its_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        // The kubelet's layout: keys are symlinks into a timestamped directory behind `..data`.
        let data = dir.path().join("..2026_11_23_10_00_00.1");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("internal.crt"), "pem").unwrap();
        std::fs::write(data.join("partner.pem"), "pem").unwrap();
        std::os::unix::fs::symlink("..2026_11_23_10_00_00.1", dir.path().join("..data")).unwrap();
        for key in ["internal.crt", "partner.pem"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key)).unwrap();
        }
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        assert_eq!(
            files_in(dir.path()).unwrap(),
            [
                dir.path().join("internal.crt"),
                dir.path().join("partner.pem")
            ]
        );
    }

    #[test]
    fn a_missing_directory_holds_nothing_and_an_unreadable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(files_in(&dir.path().join("absent")).unwrap().is_empty());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(files_in(&file).is_err(), "a file is not a directory");
    }
}

//! `boundary-webhook`: the mutating admission webhook (see ARCHITECTURE.md).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use boundary_api::contract::webhook_env;
use boundary_telemetry::{LogArgs, LogFormat};
use boundary_webhook::admit::Planner;
use boundary_webhook::admit::{
    ApiPods, ApiPullSecrets, FixedPullSecrets, ImageLookup, PullSecretSource,
};
use boundary_webhook::cache::LiveView;
use boundary_webhook::ecr::EcrSettings;
use boundary_webhook::guard::Jailing;
use boundary_webhook::image::{Resolver, ResolverConfig};
use boundary_webhook::inject::Settings;
use boundary_webhook::server::{Config, Server};
use clap::{ArgAction, Parser};

/// Mutating admission webhook that jails opted-in pods with the least-privileged tier their
/// nodes support.
#[derive(Debug, Parser)]
#[command(name = "boundary-webhook", version, about)]
struct Cli {
    /// HTTPS address of `/mutate`.
    #[arg(
        long,
        env = webhook_env::HTTPS_ADDR,
        default_value = "0.0.0.0:8443"
    )]
    https_addr: SocketAddr,
    /// Plain HTTP address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(
        long,
        env = webhook_env::PLAIN_ADDR,
        default_value = "0.0.0.0:8080"
    )]
    plain_addr: SocketAddr,
    /// Serving certificate (PEM); re-read when it changes (Secret volume updates included).
    #[arg(
        long,
        env = webhook_env::CERT_FILE,
        default_value = "/etc/agent-boundary/webhook-tls/tls.crt"
    )]
    cert_file: PathBuf,
    /// Private key of the serving certificate (PEM).
    #[arg(
        long,
        env = webhook_env::KEY_FILE,
        default_value = "/etc/agent-boundary/webhook-tls/tls.key"
    )]
    key_file: PathBuf,
    /// The jail-runtime image injected into pods.
    #[arg(long, env = webhook_env::IMAGE)]
    image: String,
    /// Pull policy of the injected image.
    #[arg(
        long,
        env = webhook_env::IMAGE_PULL_POLICY,
        default_value = "IfNotPresent"
    )]
    image_pull_policy: String,
    /// CPU request of the injected sidecar.
    #[arg(
        long,
        env = webhook_env::SIDECAR_CPU_REQUEST,
        default_value = "10m"
    )]
    sidecar_cpu_request: String,
    /// Memory request of the injected sidecar.
    #[arg(
        long,
        env = webhook_env::SIDECAR_MEMORY_REQUEST,
        default_value = "32Mi"
    )]
    sidecar_memory_request: String,
    /// Memory limit of the injected sidecar.
    #[arg(
        long,
        env = webhook_env::SIDECAR_MEMORY_LIMIT,
        default_value = "256Mi"
    )]
    sidecar_memory_limit: String,
    /// Audit lines of the injected sidecar (`kubectl logs -c boundary`): `json` or `ocsf` (OCSF
    /// 1.3.0 events, for SIEMs).
    #[arg(
        long,
        env = webhook_env::SIDECAR_AUDIT_FORMAT,
        default_value = "json",
        value_parser = ["json", "ocsf"]
    )]
    sidecar_audit_format: String,
    /// Threads of the injected sidecar's proxy: 1 serves one agent's traffic; more for pods whose
    /// agents move heavy parallel traffic (give the sidecar the CPUs too); 0: one per CPU.
    #[arg(long, env = webhook_env::SIDECAR_WORKER_THREADS, default_value_t = 1)]
    sidecar_worker_threads: u16,
    /// Give jailed pods the readiness gate `agentboundary.dev/enforced`: they are not Ready until
    /// the operator has confirmed, from their sidecar, that every jailed container runs in its
    /// jail under the current policy.
    #[arg(
        long,
        env = webhook_env::ENFORCEMENT_READINESS_GATE,
        default_value_t = false
    )]
    enforcement_readiness_gate: bool,
    /// Namespaces where jailing is required whatever their labels (comma-separated): every pod
    /// is jailed or refused, and the pod-level opt-out is ignored.
    #[arg(
        long,
        env = webhook_env::REQUIRED_NAMESPACES,
        value_delimiter = ','
    )]
    required_namespaces: Vec<String>,
    /// Service accounts (`namespace/name`, comma-separated) whose pods may carry the opt-out
    /// label `agentboundary.dev/inject=disabled` where an Enforce policy selects them.
    #[arg(
        long,
        env = webhook_env::OPT_OUT_SERVICE_ACCOUNTS,
        value_delimiter = ','
    )]
    opt_out_service_accounts: Vec<String>,
    /// Largest `AdmissionReview` body accepted, in bytes.
    #[arg(long, env = webhook_env::MAX_BODY_BYTES, default_value_t = 7 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Shutdown on SIGTERM.
    #[command(flatten)]
    shutdown: ShutdownArgs,
    /// Image lookups in registries.
    #[command(flatten)]
    registry: RegistryArgs,
    /// Diagnostics.
    #[command(flatten)]
    log: LogArgs,
}

/// How the webhook stops: it keeps answering reviews while it is taken out of the Service, then
/// finishes the open ones. A second SIGTERM or Ctrl-C exits at once.
#[derive(Debug, clap::Args)]
struct ShutdownArgs {
    /// Seconds reviews are still served after SIGTERM while `/readyz` answers 503, so that
    /// endpoints, kube-proxy and the apiserver stop sending reviews here before the listener
    /// closes.
    #[arg(long, env = webhook_env::SHUTDOWN_DELAY_SECONDS, default_value_t = 10)]
    shutdown_delay_seconds: u64,
    /// Seconds open requests may take to finish after the delay (keep it above the webhook
    /// configuration's timeoutSeconds).
    #[arg(long, env = webhook_env::SHUTDOWN_GRACE_SECONDS, default_value_t = 10)]
    shutdown_grace_seconds: u64,
}

/// How the webhook reads image configs from registries.
#[derive(Debug, clap::Args)]
#[allow(clippy::struct_excessive_bools)] // independent switches, each a Helm value
struct RegistryArgs {
    /// Read image configs (`Entrypoint`, `Cmd`, `User`) from registries when a plan needs them:
    /// a wrapped container without `command`, or a capability tier and the image's `USER`.
    /// Off: such containers are denied (Enforce) and users stay unknown.
    #[arg(long, env = webhook_env::REGISTRY_LOOKUP, default_value_t = true, action = ArgAction::Set)]
    registry_lookup: bool,
    /// Use the pod's and its ServiceAccount's imagePullSecrets for lookups (needs `get` on
    /// Secrets and service accounts). Off: anonymous lookups only.
    #[arg(long, env = webhook_env::REGISTRY_PULL_SECRETS, default_value_t = true, action = ArgAction::Set)]
    registry_pull_secrets: bool,
    /// Time for all registry lookups of one review, in milliseconds; keep it under the
    /// webhook configuration's timeoutSeconds.
    #[arg(
        long,
        env = webhook_env::REGISTRY_BUDGET_MS,
        default_value_t = 4000
    )]
    registry_budget_ms: u64,
    /// How long a tag's digest is reused before the registry is asked again.
    #[arg(
        long,
        env = webhook_env::REGISTRY_TAG_TTL_SECONDS,
        default_value_t = 60
    )]
    registry_tag_ttl_seconds: u64,
    /// Image configs kept in memory (by digest; least recently used evicted).
    #[arg(
        long,
        env = webhook_env::REGISTRY_CONFIG_CACHE_ENTRIES,
        default_value_t = 4096
    )]
    registry_config_cache_entries: usize,
    /// Architecture picked from multi-platform images when the pod has no
    /// `kubernetes.io/arch` node selector (`amd64`, `arm64`, `arm/v7`).
    #[arg(long, env = webhook_env::REGISTRY_ARCH, default_value = "amd64")]
    registry_arch: String,
    /// Pull from ECR registries (`<account>.dkr.ecr.<region>.amazonaws.com`) with the webhook's
    /// own AWS identity (IRSA, EKS Pod Identity, instance profile, environment).
    #[arg(long, env = webhook_env::REGISTRY_ECR, default_value_t = true, action = ArgAction::Set)]
    registry_ecr: bool,
    /// PEM file of CA certificates trusted for registries besides Mozilla's roots (registries
    /// with a private CA).
    #[arg(long, env = webhook_env::REGISTRY_CA_FILE)]
    registry_ca_file: Option<PathBuf>,
    /// Registries (`host[:port]`, comma-separated) spoken to over plain HTTP.
    #[arg(
        long,
        env = webhook_env::INSECURE_REGISTRIES,
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
}

/// The certificates of a PEM file (at least one).
fn registry_cas(path: &std::path::Path) -> anyhow::Result<Vec<Vec<u8>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading the registry CA file {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "the registry CA file {} holds no PEM certificate",
        path.display()
    );
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// The admins' jailing settings; a service account not written `namespace/name` is an error.
fn jailing(cli: &Cli) -> anyhow::Result<Jailing> {
    let trimmed = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let accounts = trimmed(&cli.opt_out_service_accounts);
    for account in &accounts {
        let valid = account
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
        anyhow::ensure!(
            valid,
            "--opt-out-service-accounts: {account:?} is not namespace/name (e.g. ci/runner)"
        );
    }
    Ok(Jailing {
        required_namespaces: trimmed(&cli.required_namespaces).into_iter().collect(),
        opt_out_service_accounts: accounts.into_iter().collect(),
    })
}

/// mimalloc instead of glibc's malloc: a review allocates and frees many small objects, and glibc's
/// allocator was a third of the CPU per review (issue 16).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    boundary_telemetry::init(&cli.log.or_defaults("info", LogFormat::Json))?;
    let jailing = jailing(&cli)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let ready = Arc::new(AtomicBool::new(false));
    let extra_roots = match &cli.registry.registry_ca_file {
        Some(path) => registry_cas(path)?,
        None => Vec::new(),
    };
    let image_lookup = cli.registry.registry_lookup.then(|| {
        let secrets: Box<dyn PullSecretSource> = if cli.registry.registry_pull_secrets {
            Box::new(ApiPullSecrets(client.clone()))
        } else {
            Box::new(FixedPullSecrets::default())
        };
        ImageLookup {
            resolver: Arc::new(Resolver::new(ResolverConfig {
                budget: Duration::from_millis(cli.registry.registry_budget_ms),
                tag_ttl: Duration::from_secs(cli.registry.registry_tag_ttl_seconds),
                insecure_registries: cli.registry.insecure_registries.clone(),
                extra_roots,
                default_arch: cli.registry.registry_arch.clone(),
                config_cache_entries: cli.registry.registry_config_cache_entries,
                ecr: cli.registry.registry_ecr.then(EcrSettings::default),
            })),
            secrets,
        }
    });
    let view = LiveView::start(client.clone(), ready.clone())
        .await
        .context("starting the node, namespace and policy watches")?;
    let settings = Settings {
        image: cli.image.clone(),
        image_pull_policy: cli.image_pull_policy.clone(),
        sidecar_cpu_request: cli.sidecar_cpu_request.clone(),
        sidecar_memory_request: cli.sidecar_memory_request.clone(),
        sidecar_memory_limit: cli.sidecar_memory_limit.clone(),
        sidecar_audit_format: cli.sidecar_audit_format.clone(),
        sidecar_worker_threads: cli.sidecar_worker_threads,
        enforcement_readiness_gate: cli.enforcement_readiness_gate,
    };
    let config = Config {
        https_addr: cli.https_addr,
        plain_addr: cli.plain_addr,
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
        max_body_bytes: cli.max_body_bytes,
        shutdown_delay: Duration::from_secs(cli.shutdown.shutdown_delay_seconds),
        shutdown_grace: Duration::from_secs(cli.shutdown.shutdown_grace_seconds),
        ..Config::default()
    };
    let mut planner = Planner::new(view, settings)
        .with_jailing(jailing)
        .with_pod_reader(Box::new(ApiPods(client.clone())));
    let resolver = image_lookup.as_ref().map(|l| l.resolver.clone());
    if let Some(lookup) = image_lookup {
        planner = planner.with_image_lookup(lookup);
    }
    let mut server = Server::bind(config, Arc::new(planner), ready)
        .await
        .context("starting the HTTPS server")?;
    if let Some(resolver) = resolver {
        server = server.with_extra_metrics(move |out| resolver.render_metrics(out));
    }
    tracing::info!(https = %server.https_addr(), plain = %server.plain_addr(), "serving");
    // Handlers installed before serving: a signal from now on is never the default (fatal) one.
    let mut signals = Signals::install().context("installing the SIGTERM and SIGINT handlers")?;
    let (terminate, terminated) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            "shutting down (signal again to exit at once)"
        );
        let _ = terminate.send(());
        let second = signals.next().await;
        tracing::warn!(
            signal = second,
            "second signal: exiting without finishing open requests"
        );
        std::process::exit(130);
    });
    server
        .run(async {
            let _ = terminated.await;
        })
        .await;
    Ok(())
}

/// SIGTERM (how Kubernetes stops pods) and SIGINT (Ctrl-C), each delivery counted once.
struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

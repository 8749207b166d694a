//! `boundary-webhook`: the mutating admission webhook (see ARCHITECTURE.md).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use boundary_webhook::admit::Planner;
use boundary_webhook::cache::LiveView;
use boundary_webhook::inject::Settings;
use boundary_webhook::server::{Config, Server};
use clap::{Parser, ValueEnum};

/// Mutating admission webhook that jails opted-in pods with the least-privileged tier their
/// nodes support.
#[derive(Debug, Parser)]
#[command(name = "boundary-webhook", version, about)]
struct Cli {
    /// HTTPS address of `/mutate`.
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_HTTPS_ADDR",
        default_value = "0.0.0.0:8443"
    )]
    https_addr: SocketAddr,
    /// Plain HTTP address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_PLAIN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    plain_addr: SocketAddr,
    /// Serving certificate (PEM); re-read when it changes (Secret volume updates included).
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_CERT_FILE",
        default_value = "/etc/agent-boundary/webhook-tls/tls.crt"
    )]
    cert_file: PathBuf,
    /// Private key of the serving certificate (PEM).
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_KEY_FILE",
        default_value = "/etc/agent-boundary/webhook-tls/tls.key"
    )]
    key_file: PathBuf,
    /// The jail-runtime image injected into pods.
    #[arg(long, env = "BOUNDARY_WEBHOOK_IMAGE")]
    image: String,
    /// Pull policy of the injected image.
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    image_pull_policy: String,
    /// CPU request of the injected sidecar.
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_SIDECAR_CPU_REQUEST",
        default_value = "10m"
    )]
    sidecar_cpu_request: String,
    /// Memory request of the injected sidecar.
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_SIDECAR_MEMORY_REQUEST",
        default_value = "32Mi"
    )]
    sidecar_memory_request: String,
    /// Memory limit of the injected sidecar.
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_SIDECAR_MEMORY_LIMIT",
        default_value = "256Mi"
    )]
    sidecar_memory_limit: String,
    /// Give jailed pods the readiness gate `agentboundary.dev/enforced`: they are not Ready until
    /// the operator has confirmed, from their sidecar, that every jailed container runs in its
    /// jail under the current policy.
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_ENFORCEMENT_READINESS_GATE",
        default_value_t = false
    )]
    enforcement_readiness_gate: bool,
    /// Largest `AdmissionReview` body accepted, in bytes.
    #[arg(long, env = "BOUNDARY_WEBHOOK_MAX_BODY_BYTES", default_value_t = 7 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Log format: `json` (in clusters) or `text`.
    #[arg(
        long,
        env = "BOUNDARY_WEBHOOK_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
    /// Log filter (`info`, `debug`, `boundary_webhook=debug`, ...).
    #[arg(long, env = "BOUNDARY_WEBHOOK_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli);
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let ready = Arc::new(AtomicBool::new(false));
    let view = LiveView::start(client, ready.clone())
        .await
        .context("starting the node, namespace and policy watches")?;
    let settings = Settings {
        image: cli.image.clone(),
        image_pull_policy: cli.image_pull_policy.clone(),
        sidecar_cpu_request: cli.sidecar_cpu_request.clone(),
        sidecar_memory_request: cli.sidecar_memory_request.clone(),
        sidecar_memory_limit: cli.sidecar_memory_limit.clone(),
        enforcement_readiness_gate: cli.enforcement_readiness_gate,
    };
    let config = Config {
        https_addr: cli.https_addr,
        plain_addr: cli.plain_addr,
        cert_file: cli.cert_file.clone(),
        key_file: cli.key_file.clone(),
        max_body_bytes: cli.max_body_bytes,
        ..Config::default()
    };
    let server = Server::bind(config, Arc::new(Planner::new(view, settings)), ready)
        .await
        .context("starting the HTTPS server")?;
    tracing::info!(https = %server.https_addr(), plain = %server.plain_addr(), "serving");
    server
        .run(async {
            // Kubernetes stops pods with SIGTERM; Ctrl-C for people.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutting down");
        })
        .await;
    // Give in-flight reviews their answer before the process ends.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

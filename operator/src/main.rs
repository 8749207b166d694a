//! `boundary-operator`: reconciles BoundaryPolicy objects and node labels (see the library).
#![forbid(unsafe_code)]

use anyhow::Context as _;
use boundary_operator::{Config, Shutdown};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Controller for BoundaryPolicy objects and node labels.
#[derive(Debug, Parser)]
#[command(name = "boundary-operator", version, about)]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Log format.
    #[arg(long, env = "BOUNDARY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "BOUNDARY_LOG", default_value = "info")]
    log: String,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).context("--log")?;
    // Colours only on a terminal: `kubectl logs` shows escape codes as they are.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (in-cluster config or KUBECONFIG)")?;
    let (stop, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutting down: finishing the reconciles in flight (signal again to force)");
        let _ = stop.send(true);
        signal().await;
        tracing::warn!("forced shutdown");
        std::process::exit(130);
    });
    boundary_operator::run(client, cli.config, shutdown).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

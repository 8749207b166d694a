//! `boundary-operator`: reconciles BoundaryPolicy objects and node labels (see the library).
#![forbid(unsafe_code)]

use anyhow::Context as _;
use boundary_operator::{Config, Shutdown};
use boundary_telemetry::{LogArgs, LogFormat};
use clap::Parser;

/// Controller for BoundaryPolicy objects and node labels.
#[derive(Debug, Parser)]
#[command(name = "boundary-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
    /// Diagnostics.
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Remove what the operator wrote outside the Helm release (node labels, the namespace
    /// label it set, its ConfigMaps, Secrets and Lease), once its Pods are gone: the chart's
    /// post-delete hook.
    Uninstall(boundary_operator::uninstall::UninstallArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    boundary_telemetry::init(&cli.log.or_defaults("info", LogFormat::Text))?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (in-cluster config or KUBECONFIG)")?;
    if let Some(Command::Uninstall(args)) = &cli.command {
        let namespace = cli
            .config
            .namespace
            .as_deref()
            .context("uninstall needs the operator's namespace (BOUNDARY_POD_NAMESPACE)")?;
        let removed = boundary_operator::uninstall::uninstall(
            client,
            namespace,
            &cli.config.lease_name,
            cli.config.certs.webhook_secret.as_deref(),
            args,
        )
        .await?;
        tracing::info!(
            node_labels = removed.node_labels,
            namespace_labels = removed.namespace_labels,
            config_maps = removed.config_maps,
            secrets = removed.secrets,
            leases = removed.leases,
            "removed what the operator wrote outside the release"
        );
        return Ok(());
    }
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

//! `boundary-node-agent`: probes the node's jail tiers and reports them on its own Pod (see
//! `boundary_operator::node_agent`).
#![forbid(unsafe_code)]

use boundary_operator::node_agent::{self, NodeAgentArgs};
use boundary_telemetry::{LogArgs, LogFormat};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "boundary-node-agent", version, about = "Probe this node's jail tiers and report them on this agent's own Pod (DaemonSet)", long_about = node_agent::LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    agent: NodeAgentArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let mut log = cli.log.or_defaults("info", LogFormat::Json);
    // kube-rs logs each failed request itself; the agent's own line says the same with the fix.
    if let Some(level @ ("error" | "warn" | "info")) = log.level.as_deref() {
        log.level = Some(format!("{level},kube_client=off"));
    }
    if let Err(err) = boundary_telemetry::init(&log) {
        eprintln!("boundary-node-agent: {err}");
        std::process::exit(2);
    }
    std::process::exit(node_agent::run(&cli.agent).await);
}

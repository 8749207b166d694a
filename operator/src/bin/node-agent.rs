//! `boundary-node-agent`: probes the node's jail tiers and reports them on its own Pod (see
//! `boundary_operator::node_agent`).
#![forbid(unsafe_code)]

use boundary_api::contract::node_agent_env;
use boundary_operator::node_agent::{self, NodeAgentArgs};
use clap::Parser;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Debug, Parser)]
#[command(name = "boundary-node-agent", version, about = "Probe this node's jail tiers and report them on this agent's own Pod (DaemonSet)", long_about = node_agent::LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    agent: NodeAgentArgs,
    /// Log level of the JSON lines on standard error (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", env = node_agent_env::LOG_LEVEL, default_value = "info")]
    log_level: LevelFilter,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // kube-rs logs each failed request itself; the agent's own line says the same with the fix.
    let kube_level = if cli.log_level >= LevelFilter::DEBUG {
        cli.log_level
    } else {
        LevelFilter::OFF
    };
    let filter = Targets::new()
        .with_default(cli.log_level)
        .with_target("kube_client", kube_level);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .json()
        .flatten_event(true);
    tracing_subscriber::registry()
        .with(logs)
        .with(filter)
        .init();
    std::process::exit(node_agent::run(&cli.agent).await);
}

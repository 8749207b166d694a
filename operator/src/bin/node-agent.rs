//! `boundary-node-agent`: probes the node's jail tiers and reports them on its own Pod (see
//! `boundary_operator::node_agent`).
#![forbid(unsafe_code)]

use boundary_api::contract::node_agent_env;
use boundary_operator::node_agent::{self, NodeAgentArgs};
use clap::Parser;
use tracing_subscriber::filter::LevelFilter;

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
    tracing_subscriber::fmt()
        .with_max_level(cli.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .json()
        .flatten_event(true)
        .init();
    std::process::exit(node_agent::run(&cli.agent).await);
}

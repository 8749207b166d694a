//! `boundary`: jails an agent's process tree and lets out only what the policy allows.
#![forbid(unsafe_code)]

use clap::Parser;

/// Agent Boundary: a process-level egress firewall for AI agents.
#[derive(Debug, Parser)]
#[command(name = "boundary", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the jail tiers this binary knows, as JSON.
    Tiers,
}

fn main() {
    match Cli::parse().command {
        Command::Tiers => {
            let names: Vec<&str> = boundary_api::Tier::ALL
                .map(boundary_api::Tier::as_str)
                .into();
            println!("{}", serde_json::json!({ "tiers": names }));
        }
    }
}

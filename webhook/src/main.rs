//! `boundary-webhook`: the mutating admission webhook (see ARCHITECTURE.md).
#![forbid(unsafe_code)]

use clap::Parser;

/// Mutating admission webhook that jails opted-in pods with the least-privileged tier.
#[derive(Debug, Parser)]
#[command(name = "boundary-webhook", version, about)]
struct Cli {}

fn main() {
    let Cli {} = Cli::parse();
    eprintln!("boundary-webhook: the admission server is not built yet (issue 5)");
    std::process::exit(2);
}

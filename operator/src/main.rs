//! `boundary-operator`: reconciles BoundaryPolicy objects and node readiness.
#![forbid(unsafe_code)]

use clap::Parser;

/// Controller for BoundaryPolicy objects, node readiness and the webhook's certificates.
#[derive(Debug, Parser)]
#[command(name = "boundary-operator", version, about)]
struct Cli {}

fn main() {
    let Cli {} = Cli::parse();
    eprintln!("boundary-operator: the controller is not built yet (issue 6)");
    std::process::exit(2);
}

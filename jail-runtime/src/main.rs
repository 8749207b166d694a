//! `boundary`: jails an agent's process tree and lets out only what the policy allows.
//!
//! `unsafe_code` is denied workspace-wide; only [`sys`] (the kernel interface) allows it.

mod config;
mod dns;
mod forwarder;
mod jail;
mod logging;
mod netlink;
mod proxy;
mod run;
mod sidecar;
mod sys;

use std::path::PathBuf;

use clap::Parser;

/// Agent Boundary: a process-level egress firewall for AI agents.
///
/// `boundary [FLAGS] -- CMD` is `boundary run [FLAGS] -- CMD`.
#[derive(Debug, Parser)]
#[command(
    name = "boundary",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: config::RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run CMD in a jail whose only way out is the policy proxy.
    Run(config::RunArgs),
    /// Run the policy proxy as a pod's sidecar.
    Sidecar(sidecar::SidecarArgs),
    /// Print, as JSON, which jail tiers work here and why the others do not.
    Probe,
    /// Copy this binary into a directory (the init container of pods without native sidecars).
    Install {
        /// Target directory.
        #[arg(long, value_name = "DIR", env = "BOUNDARY_INSTALL_DIR", default_value = boundary_api::contract::paths::BIN_DIR)]
        to: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::Run(args)) => run::run(&args),
        None => run::run(&cli.run),
        Some(Command::Sidecar(args)) => sidecar::run(&args),
        Some(Command::Probe) => {
            let report = jail::probe::probe();
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            0
        }
        Some(Command::Install { to }) => install(&to),
    };
    std::process::exit(code);
}

fn install(dir: &std::path::Path) -> i32 {
    use std::os::unix::fs::PermissionsExt;
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let target = dir.join("boundary");
        let tmp = dir.join(".boundary.tmp");
        std::fs::copy("/proc/self/exe", &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &target)
    })();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("boundary install: copying to {}: {e}", dir.display());
            1
        }
    }
}

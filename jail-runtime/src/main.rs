//! `boundary`: jails an agent's process tree and lets out only what the policy allows.
//!
//! Composition only: the jail is `boundary-jail` (`jail-runtime/jail/`), the policy proxy
//! `boundary-proxy` (`jail-runtime/proxy/`); this binary puts them together for `boundary run`
//! (jail + forwarder + proxy in one process), `boundary sidecar` (the proxy on a pod's unix
//! socket), `boundary check` (the proxy's decision for one request), `boundary suggest` (a policy
//! from an audit) and `boundary probe`.
#![forbid(unsafe_code)]

mod check;
mod config;
mod credentials;
mod forwarder;
mod inbound;
mod presets;
mod run;
mod runtime;
mod session;
mod sidecar;
mod suggest;

use boundary_jail as jail;

use std::path::PathBuf;

use clap::Parser;

/// Agent Boundary: a process-level egress firewall for AI agents.
///
/// `boundary [FLAGS] -- CMD` is `boundary run [FLAGS] -- CMD`.
#[derive(Debug, Parser)]
#[command(name = "boundary", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `boundary run`, parsed on its own: start-up time counts for short jailed commands, and the
/// full command tree takes a while to build.
#[derive(Debug, Parser)]
#[command(
    name = "boundary run",
    version,
    about = "Run CMD in a jail whose only way out is the policy proxy"
)]
struct RunCli {
    #[command(flatten)]
    run: config::RunArgs,
}

/// Words that start another subcommand (or ask for help); anything else is `boundary run`.
const NOT_RUN: [&str; 12] = [
    "sidecar",
    "check",
    "suggest",
    "probe",
    "presets",
    "install",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
    "run",
];

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run CMD in a jail whose only way out is the policy proxy.
    Run(config::RunArgs),
    /// Run the policy proxy as a pod's sidecar.
    Sidecar(sidecar::SidecarArgs),
    /// Print what the proxy would decide for `[METHOD] URL` (or `tcp://HOST:PORT`) under the
    /// rules of --policy files and flags: exit 0 allowed, 1 denied, 2 invalid input. With
    /// `--lint` (no URL): warn about rules that open a channel out (exit 1 when any).
    Check(check::CheckArgs),
    /// Print a minimal BoundaryPolicy that allows what audit lines (files, `-`, `kubectl logs`)
    /// or a policy's status show the agent did.
    Suggest(suggest::SuggestArgs),
    /// Print, as JSON, which jail tiers work here and why the others do not.
    Probe,
    /// List the presets (`--preset`, `spec.presets`) or print one's rules.
    #[command(subcommand)]
    Presets(presets::PresetsCommand),
    /// Copy this binary into a directory (the init container of pods without native sidecars).
    Install {
        /// Target directory.
        #[arg(long, value_name = "DIR", env = boundary_api::contract::boundary_env::INSTALL_DIR, default_value = boundary_api::contract::paths::BIN_DIR)]
        to: PathBuf,
    },
}

// glibc's malloc, not mimalloc: mimalloc saved a third of the proxy's CPU per small request but
// kept what it freed on other threads, so relaying 2 GiB raised the sidecar's peak memory by
// 57-79 MiB instead of 4-5 (the test `a_gibibyte_each_way_streams_with_flat_memory`); the
// sidecar's memory limit is what every agent pod pays. On one thread (now the proxy's default)
// the relay stays flat with mimalloc too, but idle connections cost 17 KiB each instead of 15
// (over the 16 KiB target) and the benchmark's peak 46 MiB instead of 34, for 3 points more of
// keep-alive throughput.

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let is_run = first == "run" && args.get(2).and_then(|a| a.to_str()) != Some("--help");
    if is_run || !NOT_RUN.contains(&first) {
        if is_run {
            args.remove(1);
        }
        std::process::exit(run::run(&RunCli::parse_from(args).run));
    }
    let code = match Cli::parse().command {
        Command::Run(args) => run::run(&args),
        Command::Sidecar(args) => sidecar::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Suggest(args) => suggest::run(&args),
        Command::Probe => {
            let report = jail::probe::probe();
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            0
        }
        Command::Presets(command) => presets::run(&command),
        Command::Install { to } => install(&to),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::{Cli, NOT_RUN};

    /// `NOT_RUN` is kept by hand (parsing the whole command tree costs start-up time): every
    /// subcommand and help or version word must be in it, or that subcommand would be taken
    /// for `boundary run`'s command.
    #[test]
    fn not_run_lists_every_subcommand_and_nothing_else() {
        let command = Cli::command();
        let mut expected: Vec<String> = command
            .get_subcommands()
            .flat_map(|s| std::iter::once(s.get_name()).chain(s.get_all_aliases()))
            .map(str::to_owned)
            .collect();
        // clap's own subcommand and flags.
        expected.extend(["help", "-h", "--help", "-V", "--version"].map(str::to_owned));
        expected.sort();
        expected.dedup();
        let mut listed: Vec<String> = NOT_RUN.iter().map(|s| (*s).to_owned()).collect();
        listed.sort();
        assert_eq!(listed, expected);
    }
}

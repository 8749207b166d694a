//! `boundary presets list` and `boundary presets show NAME`: the presets' data is in
//! `boundary_api::presets`; this prints it.

use std::fmt::Write as _;

use boundary_api::presets;

/// What to print.
#[derive(Debug, clap::Subcommand)]
pub enum PresetsCommand {
    /// Every preset's name and what it is for.
    List,
    /// A preset's rules, as the `spec` fields of a BoundaryPolicy that say the same.
    Show {
        /// The preset's name.
        name: String,
    },
}

/// Runs the command; the exit code.
pub fn run(command: &PresetsCommand) -> i32 {
    match command {
        PresetsCommand::List => {
            print!("{}", list());
            0
        }
        PresetsCommand::Show { name } => {
            if let Some(preset) = presets::find(name) {
                print!("{}", preset.show());
                0
            } else {
                eprintln!(
                    "boundary presets show: unknown preset {name:?}; the presets are: {}",
                    presets::names()
                );
                2
            }
        }
    }
}

/// One line per preset, names aligned.
fn list() -> String {
    let width = presets::PRESETS
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(0);
    let mut out = format!("# presets version {}\n", presets::VERSION);
    for preset in presets::PRESETS {
        let _ = writeln!(out, "{:width$}  {}", preset.name, preset.summary);
    }
    out
}

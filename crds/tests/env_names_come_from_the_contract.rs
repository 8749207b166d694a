//! Every environment variable the binaries read is named in `boundary_api::contract`: a literal
//! name in a clap `env = "..."` or an `env::var("...")` call fails here.

use std::path::{Path, PathBuf};

/// Names read under their literal spelling: set by the container runtime, not by this project.
const NOT_OURS: &[&str] = &["HOSTNAME"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(line, name)` of each literal env name in `text`.
fn literal_env_names(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        for pattern in ["env = \"", "var(\"", "var_os(\"", "env_remove(\""] {
            let mut rest = line;
            while let Some(at) = rest.find(pattern) {
                let after = &rest[at + pattern.len()..];
                let name: String = after.chars().take_while(|c| *c != '"').collect();
                if !NOT_OURS.contains(&name.as_str()) {
                    found.push((number + 1, name));
                }
                rest = after;
            }
        }
    }
    found
}

#[test]
fn the_scan_finds_literal_names() {
    let sample = "#[arg(long, env = \"BOUNDARY_X\")]\nlet a = std::env::var(\"Y\");\n\
                  std::env::var(\"HOSTNAME\")\nenv = contract::env::Z";
    assert_eq!(
        literal_env_names(sample),
        [(1, "BOUNDARY_X".to_owned()), (2, "Y".to_owned())]
    );
}

#[test]
fn binaries_read_env_names_only_from_the_contract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in [
        "jail-runtime/src",
        "jail-runtime/proxy/src",
        "jail-runtime/jail/src",
        "webhook/src",
        "operator/src",
        "crds/telemetry/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "sources not found under {}",
        root.display()
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, name) in literal_env_names(&text) {
            offences.push(format!("{}:{line}: {name}", file.display()));
        }
    }
    assert!(
        offences.is_empty(),
        "literal env names (add them to crds/src/contract.rs and use the constant):\n{}",
        offences.join("\n")
    );
}

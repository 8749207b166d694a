//! Writes the `BoundaryPolicy` CRD as YAML to every place the repository keeps it:
//! `crds/boundarypolicy.yaml` (plain `kubectl apply`, the tests) and the Helm chart's
//! `charts/agent-boundary/crds/boundarypolicy.yaml` (Helm installs CRDs from there). Both are this
//! output byte for byte; a unit test fails when either is stale.
//!
//! `boundary-crdgen` writes both files; `boundary-crdgen --stdout` prints the YAML instead.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match boundary_api::crd::crd_yaml() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("boundary-crdgen: cannot serialize the CRD: {err}");
            return ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            for relative in boundary_api::crd::CRD_FILES {
                let path = root.join("..").join(relative);
                if let Err(err) = std::fs::write(&path, &yaml) {
                    eprintln!("boundary-crdgen: writing {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
                // Messages go to stderr: stdout may be redirected onto one of these files.
                eprintln!("boundary-crdgen: wrote {relative}");
            }
            ExitCode::SUCCESS
        }
        ["--stdout"] => {
            if std::io::stdout().write_all(yaml.as_bytes()).is_ok() {
                ExitCode::SUCCESS
            } else {
                eprintln!("boundary-crdgen: cannot write to stdout");
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!(
                "usage: boundary-crdgen            write {}\n       boundary-crdgen --stdout   print the CRD",
                boundary_api::crd::CRD_FILES.join(" and ")
            );
            ExitCode::from(2)
        }
    }
}

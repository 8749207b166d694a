//! Writes the CRDs (`BoundaryPolicy`, `ClusterBoundaryPolicy`) as YAML to every place the
//! repository keeps them (`boundary_api::crd::CRD_FILES`): `crds/<singular>.yaml` (plain
//! `kubectl apply`, the tests) and the Helm chart's `charts/agent-boundary/crds/<singular>.yaml`
//! (Helm installs CRDs from there). Each file is this output byte for byte; a unit test fails
//! when one is stale.
//!
//! `boundary-crdgen` writes every file; `boundary-crdgen --stdout` prints the CRDs instead, as
//! one multi-document YAML stream.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use boundary_api::crd::{CRD_FILES, crd_yaml, crds};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            for file in CRD_FILES {
                let yaml = match crd_yaml(&(file.crd)()) {
                    Ok(yaml) => yaml,
                    Err(err) => {
                        eprintln!("boundary-crdgen: cannot serialize the CRD: {err}");
                        return ExitCode::FAILURE;
                    }
                };
                let path = root.join("..").join(file.path);
                if let Err(err) = std::fs::write(&path, &yaml) {
                    eprintln!("boundary-crdgen: writing {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
                // Messages go to stderr: stdout may be redirected onto one of these files.
                eprintln!("boundary-crdgen: wrote {}", file.path);
            }
            ExitCode::SUCCESS
        }
        ["--stdout"] => {
            let mut out = String::new();
            for crd in crds() {
                match crd_yaml(&crd) {
                    Ok(yaml) => {
                        out.push_str("---\n");
                        out.push_str(&yaml);
                    }
                    Err(err) => {
                        eprintln!("boundary-crdgen: cannot serialize the CRD: {err}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            if std::io::stdout().write_all(out.as_bytes()).is_ok() {
                ExitCode::SUCCESS
            } else {
                eprintln!("boundary-crdgen: cannot write to stdout");
                ExitCode::FAILURE
            }
        }
        _ => {
            let paths: Vec<&str> = CRD_FILES.iter().map(|f| f.path).collect();
            eprintln!(
                "usage: boundary-crdgen            write {}\n       boundary-crdgen --stdout   print the CRDs",
                paths.join(", ")
            );
            ExitCode::from(2)
        }
    }
}

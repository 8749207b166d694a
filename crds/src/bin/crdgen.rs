//! Prints the `BoundaryPolicy` CRD as YAML (`crds/boundarypolicy.yaml` is this output).
#![forbid(unsafe_code)]

use std::io::Write;

fn main() -> std::process::ExitCode {
    match boundary_api::crd::crd_yaml() {
        Ok(yaml) => {
            if std::io::stdout().write_all(yaml.as_bytes()).is_ok() {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("boundary-crdgen: cannot write to stdout");
        }
        Err(err) => eprintln!("boundary-crdgen: cannot serialize the CRD: {err}"),
    }
    std::process::ExitCode::FAILURE
}

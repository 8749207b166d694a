//! Refuses CRDs that break the previous release's within a version both serve
//! (`boundary_api::crd_compat`).
//!
//! `boundary-crd-compat BASELINE CURRENT`: each a directory (its `*.yaml` files, not
//! sub-directories) or one YAML file. Exit 0: compatible; 1: incompatible, each change on one
//! line naming the CRD, the version, the field path and the change; 2: a file cannot be read or
//! is not a CRD. `tests/scripts/crd-compat.sh` picks the baseline.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use boundary_api::crd_compat::{CrdSet, compare};

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| format!("{}: {err}", path.display()))?;
        let file = entry.path();
        if file.is_file()
            && file
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

fn read_set(path: &Path) -> Result<CrdSet, String> {
    let mut set = CrdSet::default();
    for file in yaml_files(path)? {
        let text =
            std::fs::read_to_string(&file).map_err(|err| format!("{}: {err}", file.display()))?;
        set.add_yaml(&file.display().to_string(), &text)
            .map_err(|err| err.to_string())?;
    }
    if set.is_empty() {
        return Err(format!("{}: no CRD found", path.display()));
    }
    Ok(set)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [baseline, current] = args.as_slice() else {
        eprintln!(
            "usage: boundary-crd-compat BASELINE CURRENT (directories of CRD YAML files, or files)"
        );
        return ExitCode::from(2);
    };
    let (released, now) = match (read_set(Path::new(baseline)), read_set(Path::new(current))) {
        (Ok(released), Ok(now)) => (released, now),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("boundary-crd-compat: {err}");
            return ExitCode::from(2);
        }
    };
    let found = compare(&released, &now);
    if found.is_empty() {
        println!(
            "boundary-crd-compat: {} CRD(s) compatible with the baseline's {}",
            now.len(),
            released.len()
        );
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "boundary-crd-compat: {} incompatible change(s) within a served version; serve them under a new API version instead (docs/api-versions.md):",
        found.len()
    );
    for change in &found {
        eprintln!("  {change}");
    }
    ExitCode::FAILURE
}

//! `boundary suggest [FILE|-]...`: a minimal `BoundaryPolicy` from what the agent did (audit
//! lines, `kubectl logs` of sidecars, or a policy's `status.deniedDestinations`). Reading and
//! printing only; the advisor is [`boundary_api::advisor`].
//!
//! Exit codes: 0 the policy was printed, 2 bad input (an unreadable file, bad flags). Lines
//! that are not audit records are skipped and reported on standard error.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use boundary_api::advisor::{self, Base, Line, Observation, Options};
use boundary_api::{Mode, policy_file};
use clap::Args;

/// Exit code: bad input.
const EXIT_USAGE: i32 = 2;

/// How many skipped lines are named on standard error.
const NAMED_SKIPS: usize = 5;

/// Flags of `boundary suggest`. No environment variables are read: the same input gives the
/// same policy on every machine.
#[derive(Debug, Clone, Args)]
pub struct SuggestArgs {
    /// Audit files (JSON or OCSF lines, or `kubectl logs` output with `--prefix` and
    /// `--timestamps`); `-` reads standard input. None: standard input, unless --from-status.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// A `BoundaryPolicy` as `kubectl get bp NAME -o json|yaml` prints it (`-`: standard input):
    /// its `status.deniedDestinations` are read, and its spec is kept, with the suggested
    /// presets and rules appended.
    #[arg(long = "from-status", value_name = "FILE")]
    pub from_status: Option<PathBuf>,
    /// `denied` (default): what was denied or would have been (what the policy lacks); `all`:
    /// everything seen (a policy from scratch, from an Audit run with no rules).
    #[arg(long, value_name = "WHAT", default_value = "denied", value_parser = ["denied", "all"])]
    pub only: String,
    /// Everything seen: the same as `--only all`.
    #[arg(long, conflicts_with = "only")]
    pub all: bool,
    /// `metadata.name` (default: the --from-status policy's, else `suggested`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// `metadata.namespace` (default: the --from-status policy's, else none).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// `spec.podSelector.matchLabels` entry `KEY=VALUE` (repeatable; default: the
    /// --from-status policy's selector, else every pod of the namespace).
    #[arg(long = "pod-selector", value_name = "KEY=VALUE")]
    pub pod_selector: Vec<String>,
    /// `spec.mode`: Enforce (default) or Audit.
    #[arg(long, value_name = "MODE", default_value = "Enforce")]
    pub mode: String,
    /// More than N distinct paths under one prefix become `/prefix/*`, more than N sibling
    /// subdomains `*.parent` (never under a public suffix, never a host where anyone can
    /// publish).
    #[arg(long, value_name = "N", default_value_t = advisor::DEFAULT_COLLAPSE)]
    pub collapse: usize,
}

/// Runs `boundary suggest`; returns the exit code.
pub fn run(args: &SuggestArgs) -> i32 {
    match suggest(args) {
        Ok(yaml) => {
            print!("{yaml}");
            0
        }
        Err(e) => {
            eprintln!("boundary suggest: {e}");
            EXIT_USAGE
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("standard input: {e}"))?;
        return Ok(text);
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Audit lines are UTF-8; a stray byte spoils one line, not the file.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn name_of(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "standard input".into()
    } else {
        path.display().to_string()
    }
}

fn suggest(args: &SuggestArgs) -> Result<String, String> {
    let mode = match args.mode.to_ascii_lowercase().as_str() {
        "enforce" => Mode::Enforce,
        "audit" => Mode::Audit,
        other => return Err(format!("--mode {other:?}: expected Enforce or Audit")),
    };
    let mut pod_selector = BTreeMap::new();
    for item in &args.pod_selector {
        let (k, v) = item
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| format!("--pod-selector {item:?}: expected KEY=VALUE"))?;
        pod_selector.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let mut observations: Vec<Observation> = Vec::new();
    let mut options = Options {
        name: "suggested".into(),
        namespace: None,
        pod_selector,
        mode,
        all: args.all || args.only == "all",
        collapse: args.collapse,
        base: None,
    };
    if let Some(path) = &args.from_status {
        let text = read(path)?;
        let (base, name, namespace, found) =
            from_status(&text).map_err(|e| format!("--from-status {}: {e}", name_of(path)))?;
        options.base = Some(base);
        options.name = name;
        options.namespace = namespace;
        observations.extend(found);
    }
    let stdin = PathBuf::from("-");
    let files: Vec<&PathBuf> = if args.files.is_empty() && args.from_status.is_none() {
        vec![&stdin]
    } else {
        args.files.iter().collect()
    };
    let mut skipped: Vec<String> = Vec::new();
    let mut records = 0usize;
    for path in files {
        let text = read(path)?;
        for (i, line) in text.lines().enumerate() {
            match advisor::parse_line(line) {
                Line::Record(o) => {
                    records += 1;
                    observations.push(o);
                }
                Line::Ignored => {}
                Line::NotARecord => skipped.push(format!("line {} of {}", i + 1, name_of(path))),
            }
        }
    }
    if !skipped.is_empty() {
        let named: Vec<&str> = skipped
            .iter()
            .take(NAMED_SKIPS)
            .map(String::as_str)
            .collect();
        let ellipsis = if skipped.len() > NAMED_SKIPS {
            ", ..."
        } else {
            ""
        };
        eprintln!(
            "boundary suggest: skipped {} line(s) that are not audit records: {}{ellipsis}",
            skipped.len(),
            named.join(", ")
        );
    }
    if records == 0 && args.from_status.is_none() {
        eprintln!("boundary suggest: no audit record read: the policy allows nothing");
    }
    if let Some(name) = &args.name {
        options.name.clone_from(name);
    }
    if args.namespace.is_some() {
        options.namespace.clone_from(&args.namespace);
    }
    let suggestion = advisor::suggest(&observations, &options);
    for w in &suggestion.warnings {
        eprintln!("boundary suggest: warning: {w}");
    }
    Ok(suggestion.yaml)
}

type FromStatus = (Base, String, Option<String>, Vec<Observation>);

/// A `BoundaryPolicy` object (JSON or YAML): its spec (kept), name, namespace and denied
/// destinations.
fn from_status(text: &str) -> Result<FromStatus, String> {
    let object: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not a YAML or JSON object: {e}"))?;
    let file = policy_file::parse(text).map_err(|e| e.to_string())?;
    let [policy] = file.policies.as_slice() else {
        return Err("expected one BoundaryPolicy object".into());
    };
    if policy.entry.cluster {
        return Err(
            "a ClusterBoundaryPolicy has no deniedDestinations: give a BoundaryPolicy".into(),
        );
    }
    let spec = object
        .get("spec")
        .and_then(serde_yaml_ng::Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    let namespace = object
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(serde_yaml_ng::Value::as_str)
        .map(str::to_owned);
    let status: serde_json::Value = object
        .get("status")
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| format!("status: {e}"))?
        .unwrap_or_default();
    let (found, bad) = advisor::input::denied_destinations(&status);
    if bad > 0 {
        eprintln!(
            "boundary suggest: skipped {bad} entr{} of status.deniedDestinations that do not \
             read",
            if bad == 1 { "y" } else { "ies" }
        );
    }
    if found.is_empty() {
        eprintln!("boundary suggest: status.deniedDestinations is empty: nothing was denied");
    }
    let base = Base {
        spec,
        entry: policy.entry.clone(),
    };
    Ok((base, policy.entry.name.clone(), namespace, found))
}

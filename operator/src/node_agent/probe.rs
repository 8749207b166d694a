//! Runs `boundary probe` as a child process and reads its report.
//!
//! The probe builds each tier for real in forked children, which is only safe in a
//! single-threaded process: `boundary probe` is one, so the agent itself may be multi-threaded.
//! The binary comes from the same image as the sidecars the webhook injects, so the verdicts are
//! those of the jail that will run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use boundary_api::probe::ProbeReport;

use super::Error;

/// Where the jail-runtime image has `boundary` (see `charts/images/Dockerfile`).
pub const DEFAULT_BOUNDARY_BIN: &str = "/usr/local/bin/boundary";

/// A probe takes well under a second; one that hangs is killed after this.
pub const PROBE_TIMEOUT: Duration = Duration::from_mins(1);

/// Longest piece of the probe's output kept in an error.
const OUTPUT_LIMIT: usize = 400;

/// Runs `bin probe` and parses what it prints.
pub async fn run(bin: &Path, timeout: Duration) -> Result<ProbeReport, Error> {
    let child = tokio::process::Command::new(bin)
        .arg("probe")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::ProbeMissing {
                    path: bin.to_owned(),
                }
            } else {
                Error::ProbeStart {
                    path: bin.to_owned(),
                    source,
                }
            }
        })?;
    // Dropping the future on timeout drops the child, which kills it (`kill_on_drop`).
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| Error::ProbeTimeout {
            path: bin.to_owned(),
            timeout,
        })?
        .map_err(|source| Error::ProbeStart {
            path: bin.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::ProbeFailed {
            path: bin.to_owned(),
            status: output.status.to_string(),
            stderr: excerpt(&output.stderr),
        });
    }
    serde_json::from_slice(&output.stdout).map_err(|source| Error::ProbeOutput {
        path: bin.to_owned(),
        source,
        output: excerpt(&output.stdout),
    })
}

/// The start of `bytes` as text, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(OUTPUT_LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None if text.is_empty() => "(nothing)".to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    /// An executable shell script `name` in `dir` with `body`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn the_report_is_what_the_binary_prints_for_probe() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in for `boundary` that answers only `probe`, with a fixed report.
        let bin = script(
            dir.path(),
            "boundary",
            r#"[ "$*" = probe ] || { echo "usage: $*" >&2; exit 2; }
echo '{"tiers": {"landlock": {"works": true}}, "best": "landlock",
       "facts": {"kernel": "6.1.0", "landlockAbi": 4, "uid": 65532}}'"#,
        );
        let report = run(&bin, PROBE_TIMEOUT).await.unwrap();
        assert_eq!(report.best, Some(boundary_api::Tier::Landlock));
        assert_eq!(report.facts.landlock_abi, 4);
        assert_eq!(report.seccomp_profile, None);
    }

    #[tokio::test]
    async fn a_missing_failing_silent_or_hanging_probe_is_an_error_that_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(&dir.path().join("nowhere"), PROBE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ProbeMissing { .. }), "{err}");
        assert!(err.to_string().contains("--boundary-bin"), "{err}");

        let not_executable = dir.path().join("plain");
        std::fs::write(&not_executable, "").unwrap();
        let err = run(&not_executable, PROBE_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::ProbeStart { .. }), "{err}");

        let failing = script(dir.path(), "failing", "echo 'no /proc here' >&2; exit 3");
        let err = run(&failing, PROBE_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::ProbeFailed { .. }), "{err}");
        assert!(err.to_string().contains("no /proc here"), "{err}");

        let chatty = script(dir.path(), "chatty", "echo 'boundary 0.0.1'");
        let err = run(&chatty, PROBE_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::ProbeOutput { .. }), "{err}");
        assert!(err.to_string().contains("boundary 0.0.1"), "{err}");
        // JSON, but no report.
        let other = script(dir.path(), "other", "echo '{\"jails\": []}'");
        let err = run(&other, PROBE_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, Error::ProbeOutput { .. }), "{err}");

        let hanging = script(dir.path(), "hanging", "exec sleep 30");
        let err = run(&hanging, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, Error::ProbeTimeout { .. }), "{err}");
    }
}

//! `boundary run`'s audit trail end to end: curl in a real jail, `--audit-format ocsf` lines
//! checked against the OCSF 1.3.0 schema, and `--audit-file` rotated by `--audit-max-bytes`
//! with `--audit-keep` files kept, no line lost or split. Needs root (the jail).

mod common;

#[path = "../proxy/tests/ocsf_schema/mod.rs"]
mod ocsf_schema;

use common::{As, TempDir, TestServer, jailed, require_root, stderr, stdout};

#[tokio::test]
async fn ocsf_lines_rotate_in_files_of_at_most_the_size() {
    require_root();
    let http = TestServer::start(None).await;
    let audit = TempDir::new("audit-rotation");
    let file = audit.path().join("audit.jsonl");
    // Six requests: allowed, refused by a deny rule, no rule for the host; a query that must not
    // reach the trail.
    let script = format!(
        "for i in 1 2; do \
           curl -sS -o /dev/null -w '%{{http_code}} ' 'http://allowed.test:{h}/ok?token=q-secret'; \
           curl -sS -o /dev/null -w '%{{http_code}} ' http://allowed.test:{h}/secret/x; \
           curl -sS -o /dev/null -w '%{{http_code}} ' http://nothing.test:{h}/; \
         done",
        h = http.port()
    );
    let args = [
        "--allow",
        "domain=allowed.test",
        "--deny",
        "domain=allowed.test path=/secret/*",
        "--resolve",
        "allowed.test=127.0.0.1",
        "--audit-file",
        file.to_str().unwrap(),
        "--audit-format",
        "ocsf",
        "--audit-max-bytes",
        "2KiB",
        "--audit-keep",
        "5",
    ];
    let out = jailed(As::Nobody, &args, &script).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "200 403 403 200 403 403");

    let mut lines = Vec::new();
    let mut files = 0;
    // Oldest first: FILE.5 .. FILE.1, FILE.
    for n in (0..=5).rev() {
        let path = if n == 0 {
            file.clone()
        } else {
            std::path::PathBuf::from(format!("{}.{n}", file.display()))
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        files += 1;
        assert!(text.ends_with('\n'), "{} ends mid-line", path.display());
        let count = text.lines().count();
        assert!(
            text.len() <= 2048 || count == 1,
            "{}: {} bytes in {count} lines",
            path.display(),
            text.len()
        );
        for line in text.lines() {
            lines.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
        }
    }
    assert!(
        files >= 3,
        "six lines of about 1 KiB rotate at 2 KiB: {files} files"
    );
    assert_eq!(lines.len(), 6, "every line, once: {lines:#?}");
    ocsf_schema::assert_valid(&lines);
    let text = serde_json::to_string(&lines).unwrap();
    assert!(!text.contains("q-secret"), "no query in the trail");
    let decisions: Vec<&str> = lines
        .iter()
        .map(|l| l["unmapped"]["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        ["allow", "deny", "deny", "allow", "deny", "deny"]
    );
    assert_eq!(lines[1]["unmapped"]["denied_by"], "deny-rule");
    assert!(lines.iter().all(|l| l["class_uid"] == 4002));
}

#[tokio::test]
async fn a_rotation_that_fails_is_said_once_on_stderr_and_no_line_is_lost() {
    require_root();
    let http = TestServer::start(None).await;
    let audit = TempDir::new("audit-rotation-fails");
    let file = audit.path().join("audit.jsonl");
    // `FILE.1` is a non-empty directory: renaming the file onto it fails, as root too.
    let blocker = audit.path().join("audit.jsonl.1");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), "x").unwrap();
    let script = format!(
        "for i in 1 2 3 4 5 6; do curl -sS -o /dev/null http://nothing.test:{}/; done",
        http.port()
    );
    let args = [
        "--audit-file",
        file.to_str().unwrap(),
        "--audit-max-bytes",
        "100",
        "--audit-keep",
        "1",
    ];
    let out = jailed(As::Nobody, &args, &script).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.matches("rotating the audit file failed").count(),
        1,
        "said once:\n{err}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 6, "every line in the file:\n{text}");
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["decision"], "deny");
    }
    assert!(blocker.join("keep").exists());
}

//! Size-based rotation of the audit file (`--audit-max-bytes`, `--audit-keep`) on real files in
//! a temporary directory: lines of a known size go through the audit writer, and the files are
//! read back: which exist, their sizes, every line whole and in order, none lost but those of
//! the files past `keep`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use boundary_proxy::audit::{Audit, Format, Options, Rotation, Sink};
use serde_json::{Value, json};

/// Line `n` of the test: always `LINE` bytes with its newline.
fn line(n: usize) -> Value {
    json!({"n": format!("{n:06}"), "pad": "x".repeat(LINE - 24)})
}

/// Bytes of each line, newline included.
const LINE: usize = 100;

fn numbered(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// The numbers of the lines in `path`, checking each line is whole (parses, `LINE` bytes).
fn numbers(path: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends mid-line",
        path.display()
    );
    text.lines()
        .map(|l| {
            assert_eq!(l.len() + 1, LINE, "a whole line: {l:?}");
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            v["n"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

async fn write(audit: &Audit, lines: std::ops::Range<usize>) {
    assert_eq!(serde_json::to_string(&line(0)).unwrap().len() + 1, LINE);
    for n in lines {
        audit.record_line(&line(n));
        // One batch per line: rotation is checked line by line either way, this only makes the
        // writer's batching irrelevant to the test.
        if n % 7 == 0 {
            audit.flush().await;
        }
    }
    audit.flush().await;
    // `flush` returns once lines are handed to the file; give the writer its batch window.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn start(path: &Path, max_bytes: u64, keep: u32) -> Audit {
    Audit::start(
        &Sink::File(path.to_owned()),
        Options {
            format: Format::Json,
            rotation: Some(Rotation { max_bytes, keep }),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn files_rotate_at_the_size_and_keep_k() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // Ten lines fit in a file.
    let audit = start(&path, 10 * LINE as u64, 3);
    write(&audit, 1..46).await;
    assert_eq!(numbers(&path), (41..46).collect::<Vec<_>>());
    assert_eq!(numbers(&numbered(&path, 1)), (31..41).collect::<Vec<_>>());
    assert_eq!(numbers(&numbered(&path, 2)), (21..31).collect::<Vec<_>>());
    assert_eq!(numbers(&numbered(&path, 3)), (11..21).collect::<Vec<_>>());
    assert!(
        !numbered(&path, 4).exists(),
        "keep 3: lines 1..10 were dropped"
    );
    for (file, size) in [
        (path.clone(), 5),
        (numbered(&path, 1), 10),
        (numbered(&path, 3), 10),
    ] {
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            (size * LINE) as u64,
            "{}",
            file.display()
        );
    }
    assert_eq!(audit.rotation_failures(), 0);
}

#[tokio::test]
async fn an_existing_file_counts_and_a_long_line_gets_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // A previous run left 3 lines.
    let before: String = (900..903)
        .map(|n| serde_json::to_string(&line(n)).unwrap() + "\n")
        .collect();
    std::fs::write(&path, before).unwrap();
    let audit = start(&path, 4 * LINE as u64, 1);
    write(&audit, 1..3).await;
    assert_eq!(numbers(&numbered(&path, 1)), vec![900, 901, 902, 1]);
    assert_eq!(numbers(&path), vec![2]);
    drop(audit);

    // A limit smaller than a line: one line per file, never split.
    let path = dir.path().join("small.jsonl");
    let audit = start(&path, 10, 2);
    write(&audit, 1..5).await;
    assert_eq!(numbers(&path), vec![4]);
    assert_eq!(numbers(&numbered(&path, 1)), vec![3]);
    assert_eq!(numbers(&numbered(&path, 2)), vec![2]);
    assert!(!numbered(&path, 3).exists());

    // keep 0: the file starts again, nothing is kept.
    let path = dir.path().join("none.jsonl");
    let audit = start(&path, 2 * LINE as u64, 0);
    write(&audit, 1..6).await;
    assert_eq!(numbers(&path), vec![5]);
    assert!(!numbered(&path, 1).exists());
}

#[tokio::test]
async fn a_failed_rotation_is_counted_and_writing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // `audit.jsonl.1` is a non-empty directory: renaming the file onto it fails, as root too.
    let blocker = numbered(&path, 1);
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), "x").unwrap();
    let audit = start(&path, 10 * LINE as u64, 1);
    write(&audit, 1..26).await;
    // Tried at line 11, then again after another 10 lines (21): both failed, nothing lost.
    assert_eq!(audit.rotation_failures(), 2);
    assert_eq!(numbers(&path), (1..26).collect::<Vec<_>>());
    assert!(blocker.is_dir());

    // Once the way is clear, the next try (after line 30) rotates.
    std::fs::remove_dir_all(&blocker).unwrap();
    write(&audit, 26..36).await;
    assert_eq!(audit.rotation_failures(), 2);
    assert_eq!(numbers(&numbered(&path, 1)), (1..31).collect::<Vec<_>>());
    assert_eq!(numbers(&path), (31..36).collect::<Vec<_>>());
}

#[tokio::test]
async fn without_rotation_the_file_only_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::start(&Sink::File(path.clone()), Options::default()).unwrap();
    write(&audit, 1..31).await;
    assert_eq!(numbers(&path), (1..31).collect::<Vec<_>>());
    assert!(!numbered(&path, 1).exists());
}

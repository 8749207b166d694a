//! Size-based rotation of an audit file (`--audit-max-bytes`, `--audit-keep`), done by the
//! writer thread between two lines, so no line is ever split across files and the proxy never
//! waits for it: `FILE` → `FILE.1` → … → `FILE.K`, the oldest dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// When to rotate and how many rotated files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A line that would take the file past this size starts a new file (a longer line gets a
    /// file of its own).
    pub max_bytes: u64,
    /// Rotated files kept: `FILE.1` (newest) .. `FILE.K`; 0 keeps none.
    pub keep: u32,
}

/// Rotated files kept when `--audit-keep` is not given.
pub const DEFAULT_KEEP: u32 = 5;

/// Most rotated files `--audit-keep` accepts.
pub const MAX_KEEP: u32 = 1000;

/// Errors reading a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a size: use bytes (`1048576`) or a number with K, KiB, M, MiB, G or GiB (`10MiB`; powers of 1024), at least 1"
)]
pub struct SizeError(pub String);

/// Reads a size: bytes, or a number with a binary suffix (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`; all
/// powers of 1024, as log sizes usually are).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let err = || SizeError(text.to_owned());
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits);
    let number: u64 = number.parse().map_err(|_| err())?;
    let unit: u64 = match suffix.trim() {
        "" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    match number.checked_mul(unit) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(err()),
    }
}

/// An audit file that rotates itself.
pub(super) struct RotatingFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// Bytes in the current file.
    size: u64,
    /// The size past which the next line rotates: `max_bytes`, or more after a failed
    /// rotation (the next try waits until another `max_bytes` were written).
    limit: u64,
    rotation: Rotation,
    failures: Arc<AtomicU64>,
}

impl RotatingFile {
    /// Appends to `file` (opened at `path`), counting failed rotations in `failures`.
    pub(super) fn new(
        path: PathBuf,
        file: File,
        rotation: Rotation,
        failures: Arc<AtomicU64>,
    ) -> RotatingFile {
        let size = file.metadata().map_or(0, |m| m.len());
        RotatingFile {
            path,
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
            limit: rotation.max_bytes,
            rotation,
            failures,
        }
    }

    /// Writes one line (and its newline), rotating first when it would not fit.
    pub(super) fn line(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size.saturating_add(len) > self.limit {
            self.rotate();
        }
        // A write error (disk full) loses this line only; later ones are tried again.
        if self.out.write_all(line.as_bytes()).is_ok() && self.out.write_all(b"\n").is_ok() {
            self.size += len;
        }
    }

    pub(super) fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn rotate(&mut self) {
        let _ = self.out.flush();
        match shift(&self.path, self.rotation.keep).and_then(|()| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        }) {
            Ok(file) => {
                self.out = BufWriter::with_capacity(64 * 1024, file);
                self.size = 0;
                self.limit = self.rotation.max_bytes;
            }
            Err(e) => {
                // Writing goes on into the file open now (renamed or not): no line is lost.
                if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        file = %self.path.display(),
                        error = %e,
                        "rotating the audit file failed: writing on to it (reported once; tried again after another --audit-max-bytes)"
                    );
                }
                self.limit = self.size.saturating_add(self.rotation.max_bytes);
            }
        }
    }
}

/// `PATH.{keep-1}` → `PATH.{keep}`, …, `PATH` → `PATH.1` (with `keep` 0: `PATH` removed).
fn shift(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..keep).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let table = [
            ("1", Ok(1)),
            ("1048576", Ok(1 << 20)),
            ("10K", Ok(10 << 10)),
            ("10KiB", Ok(10 << 10)),
            ("10MiB", Ok(10 << 20)),
            ("2M", Ok(2 << 20)),
            ("1GiB", Ok(1 << 30)),
            (" 3 MiB ", Ok(3 << 20)),
            ("0", Err(())),
            ("", Err(())),
            ("MiB", Err(())),
            ("10MB", Err(())),
            ("-1", Err(())),
            ("1.5M", Err(())),
            ("99999999999999999999G", Err(())),
            ("17179869184G", Err(())),
        ];
        for (text, want) in table {
            assert_eq!(parse_size(text).map_err(|_| ()), want, "{text:?}");
        }
        let message = parse_size("10MB").unwrap_err().to_string();
        assert!(
            message.contains("\"10MB\"") && message.contains("MiB"),
            "{message}"
        );
    }
}

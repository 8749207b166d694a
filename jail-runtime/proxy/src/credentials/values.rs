//! The real values of credentials, apart from the rules so a rotated Secret needs no policy
//! reload.
//!
//! In a pod they are the files of the sidecar's credentials directory (the namespace's
//! credentials Secret, mounted into the sidecar only): one file per credential, named
//! `boundary_api::credentials::value_key`, holding a `CredentialValue` as JSON. The directory is
//! fingerprinted every second (each entry's device, inode, size and mtime, through the kubelet's
//! `..data` symlinks), and read again when it changed; a file that does not parse is left out
//! (its credential then has no value: requests bound to it are refused). A missing directory is
//! no values. Standalone, the values come from the supervisor's environment, once.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use boundary_api::credentials::CredentialValue;

use super::Values;

/// Where values come from.
#[derive(Debug, Clone, Default)]
pub enum ValueSource {
    /// None (no credentials).
    #[default]
    None,
    /// Fixed (standalone: from the supervisor's environment), by credential name.
    Static(Values),
    /// The sidecar's credentials directory.
    Dir(PathBuf),
}

type Fingerprint = Vec<(String, u64, u64, u64, i64)>;

struct Snapshot {
    values: Arc<Values>,
    fingerprint: Fingerprint,
}

/// The values now, swapped atomically on reload.
pub struct ValueStore {
    dir: Option<PathBuf>,
    current: ArcSwap<Snapshot>,
}

impl std::fmt::Debug for ValueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueStore")
            .field("dir", &self.dir)
            .field(
                "keys",
                &self.current.load().values.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ValueStore {
    /// Loads the values (a directory: now, then on [`ValueStore::reload_if_changed`]).
    pub fn new(source: ValueSource) -> ValueStore {
        let (dir, snapshot) = match source {
            ValueSource::None => (
                None,
                Snapshot {
                    values: Arc::default(),
                    fingerprint: Vec::new(),
                },
            ),
            ValueSource::Static(values) => (
                None,
                Snapshot {
                    values: Arc::new(values),
                    fingerprint: Vec::new(),
                },
            ),
            ValueSource::Dir(dir) => {
                let snapshot = read_dir(&dir);
                (Some(dir), snapshot)
            }
        };
        ValueStore {
            dir,
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The values now.
    pub fn values(&self) -> Arc<Values> {
        self.current.load().values.clone()
    }

    /// Reads the directory again when it changed; whether it did.
    pub fn reload_if_changed(&self) -> bool {
        let Some(dir) = &self.dir else { return false };
        if fingerprint(dir) == self.current.load().fingerprint {
            return false;
        }
        let snapshot = read_dir(dir);
        let keys: Vec<String> = snapshot.values.keys().cloned().collect();
        self.current.store(Arc::new(snapshot));
        tracing::info!(?keys, "credential values reloaded");
        true
    }

    /// Checks the directory every second until the runtime stops.
    pub fn spawn_reloader(self: &Arc<Self>) {
        if self.dir.is_none() {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                store.reload_if_changed();
            }
        });
    }
}

/// The directory's entries (hidden ones, the kubelet's `..data` machinery, left out) with what
/// they resolve to.
fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Fingerprint = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            if name.starts_with('.') {
                return None;
            }
            let m = std::fs::metadata(e.path()).ok()?;
            m.is_file().then(|| {
                (
                    name,
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                )
            })
        })
        .collect();
    out.sort();
    out
}

fn read_dir(dir: &Path) -> Snapshot {
    // Fingerprint first: a change racing with the read is picked up next time.
    let fingerprint = fingerprint(dir);
    let mut values = HashMap::new();
    for (name, ..) in &fingerprint {
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read a credential value");
                continue;
            }
        };
        if let Ok(value) = serde_json::from_slice::<CredentialValue>(&bytes) {
            values.insert(name.clone(), value);
        } else {
            // serde's message could quote the file's content: not logged.
            tracing::error!(
                file = %path.display(),
                "credential value file is not {{\"value\": ...}} or {{\"aws\": ...}} JSON: left out"
            );
        }
    }
    Snapshot {
        values: Arc::new(values),
        fingerprint,
    }
}

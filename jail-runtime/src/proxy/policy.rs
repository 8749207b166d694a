//! The rules the proxy enforces, and their hot reload.
//!
//! Standalone (`boundary run`), the rules come from the command line and config file and never
//! change. In the sidecar they come from the compiled-policy file (a mounted ConfigMap, updated
//! by the kubelet through an atomic `..data` symlink swap) and the pod's labels (a downward-API
//! file). Both are checked every second by what they resolve to (device, inode, size, mtime), so
//! a symlink swap is seen. A new version that does not parse or compile is rejected and the old
//! rules stay, with an error in the log and the metrics. Open connections keep the rules they
//! started with only until their next request: each request reads the current rules.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use boundary_api::Mode;
use boundary_api::compiled::{CompiledPolicy, parse_downward_labels};
use boundary_api::rules::RuleSet;

use super::metrics::Metrics;

/// Rules for one container, with the policies they came from.
#[derive(Debug)]
pub struct Resolved {
    /// The rules.
    pub rules: RuleSet,
    /// Names of the policies (empty standalone).
    pub policies: Vec<String>,
}

/// Where rules come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Fixed rules (command line, config file).
    Static(Arc<RuleSet>),
    /// The compiled-policy file and, optionally, the pod's downward-API labels file.
    File {
        /// `policy.json`.
        policy: PathBuf,
        /// `labels` (downward API); without it the pod is taken to have no labels.
        labels: Option<PathBuf>,
    },
}

/// Why a policy version was rejected.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a compiled policy.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// The policy does not select or compile.
    #[error("{0}")]
    Select(#[from] boundary_api::compiled::SelectError),
}

struct Loaded {
    compiled: Option<CompiledPolicy>,
    /// `policy_hash` of the file `compiled` came from.
    hash: Option<String>,
    labels: BTreeMap<String, String>,
    fingerprint: Vec<(u64, u64, u64, i64)>,
    per_container: Mutex<HashMap<Option<String>, Arc<Resolved>>>,
}

/// The current rules, swapped atomically on reload.
pub struct PolicyStore {
    source: Source,
    current: ArcSwap<Loaded>,
    fixed: Option<Arc<Resolved>>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn fingerprint(paths: &[&Path]) -> Vec<(u64, u64, u64, i64)> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).map_or((0, 0, 0, 0), |m| {
                (
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                )
            })
        })
        .collect()
}

impl PolicyStore {
    /// Loads the first version. For a file source a missing or bad file is an error the caller
    /// may treat as fatal; [`PolicyStore::deny_all`] starts without one.
    pub fn load(source: Source) -> Result<PolicyStore, LoadError> {
        let (loaded, fixed) = match &source {
            Source::Static(rules) => (
                Loaded {
                    compiled: None,
                    hash: None,
                    labels: BTreeMap::new(),
                    fingerprint: Vec::new(),
                    per_container: Mutex::new(HashMap::new()),
                },
                Some(Arc::new(Resolved {
                    rules: (**rules).clone(),
                    policies: Vec::new(),
                })),
            ),
            Source::File { policy, labels } => (read(policy, labels.as_deref())?, None),
        };
        Ok(PolicyStore {
            source,
            current: ArcSwap::from_pointee(loaded),
            fixed,
        })
    }

    /// A file source whose first version is missing or bad: deny everything until a good one
    /// appears (fail closed).
    pub fn deny_all(source: Source) -> PolicyStore {
        PolicyStore {
            source,
            current: ArcSwap::from_pointee(Loaded {
                compiled: None,
                hash: None,
                labels: BTreeMap::new(),
                fingerprint: Vec::new(),
                per_container: Mutex::new(HashMap::new()),
            }),
            fixed: None,
        }
    }

    /// The hash of the compiled-policy file in force (`None`: no file loaded yet, or static
    /// rules).
    pub fn hash(&self) -> Option<String> {
        self.current.load().hash.clone()
    }

    /// The rules for `container` now.
    pub fn rules_for(&self, container: Option<&str>) -> Arc<Resolved> {
        if let Some(fixed) = &self.fixed {
            return fixed.clone();
        }
        let loaded = self.current.load();
        let key = container.map(str::to_owned);
        let mut cache = loaded
            .per_container
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = cache.get(&key) {
            return r.clone();
        }
        let resolved = Arc::new(match &loaded.compiled {
            // Validated at load time for the pod; a container-specific compile cannot fail
            // differently, but deny all if it somehow does.
            Some(compiled) => match compiled.rule_set(&loaded.labels, container) {
                Ok((rules, policies)) => Resolved { rules, policies },
                Err(_) => deny_everything(),
            },
            None => deny_everything(),
        });
        cache.insert(key, resolved.clone());
        resolved
    }

    /// Checks the files once; `Some(Ok)` when a new version was loaded, `Some(Err)` when one was
    /// rejected, `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), LoadError>> {
        let Source::File { policy, labels } = &self.source else {
            return None;
        };
        let mut paths = vec![policy.as_path()];
        if let Some(l) = labels {
            paths.push(l);
        }
        let now = fingerprint(&paths);
        let current = self.current.load();
        if now == current.fingerprint {
            return None;
        }
        match read(policy, labels.as_deref()) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                Some(Ok(()))
            }
            Err(e) => {
                // Remember the bad version so it is reported once, not every second.
                let kept = Loaded {
                    compiled: current.compiled.clone(),
                    hash: current.hash.clone(),
                    labels: current.labels.clone(),
                    fingerprint: now,
                    per_container: Mutex::new(HashMap::new()),
                };
                self.current.store(Arc::new(kept));
                Some(Err(e))
            }
        }
    }

    /// Reloads every second until the runtime stops.
    pub fn spawn_reloader(self: &Arc<Self>, metrics: Arc<Metrics>) {
        if matches!(self.source, Source::Static(_)) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match store.reload_if_changed() {
                    Some(Ok(())) => {
                        metrics.reload(true);
                        tracing::info!(policies = ?store.rules_for(None).policies, "policy reloaded");
                    }
                    Some(Err(e)) => {
                        metrics.reload(false);
                        tracing::error!(error = %e, "new policy rejected; keeping the previous one");
                    }
                    None => {}
                }
            }
        });
    }
}

fn deny_everything() -> Resolved {
    Resolved {
        rules: RuleSet::new(Vec::new(), Mode::Enforce),
        policies: Vec::new(),
    }
}

fn read(policy: &Path, labels: Option<&Path>) -> Result<Loaded, LoadError> {
    let mut paths = vec![policy];
    if let Some(l) = labels {
        paths.push(l);
    }
    // Fingerprint first: a change racing with the read is picked up next time.
    let fingerprint = fingerprint(&paths);
    let text = std::fs::read(policy).map_err(|source| LoadError::Read {
        path: policy.display().to_string(),
        source,
    })?;
    let compiled: CompiledPolicy =
        serde_json::from_slice(&text).map_err(|source| LoadError::Parse {
            path: policy.display().to_string(),
            source,
        })?;
    let labels = match labels {
        Some(path) => parse_downward_labels(&std::fs::read_to_string(path).map_err(|source| {
            LoadError::Read {
                path: path.display().to_string(),
                source,
            }
        })?),
        None => BTreeMap::new(),
    };
    // Validate everything that could apply to this pod now, so a bad version is rejected whole.
    compiled.rule_set(&labels, None)?;
    Ok(Loaded {
        compiled: Some(compiled),
        hash: Some(boundary_api::compiled::policy_hash(&text)),
        labels,
        fingerprint,
        per_container: Mutex::new(HashMap::new()),
    })
}

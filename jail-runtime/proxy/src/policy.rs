//! The rules the proxy enforces, and their hot reload.
//!
//! Standalone (`boundary run`), the rules come from the command line and config file and never
//! change. In the sidecar they come from the compiled-policy file (a mounted ConfigMap, updated
//! by the kubelet through an atomic `..data` symlink swap) and the pod's labels (a downward-API
//! file). Both are checked every second by what they resolve to (device, inode, size, mtime), so
//! a symlink swap is seen. A new version that does not parse or compile is rejected and the old
//! rules stay, with an error in the log and the metrics. Open connections keep the rules they
//! started with only until their next request: each request reads the current rules.
//!
//! A policy file that disappears (the namespace's ConfigMap was deleted: the kubelet empties an
//! optional ConfigMap volume) is not a rejected version: the last policy loaded stays in force
//! and the store says the file is missing (once in the log and the audit trail, in `/status`
//! and as a metric) until a file is there again, which is then loaded as usual.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use boundary_api::Mode;
use boundary_api::compiled::{CompiledPolicy, parse_downward_labels};
use boundary_api::rules::RuleSet;

use crate::audit::Events;
use crate::credentials::CredentialSet;
use crate::guard::Exemptions;
use crate::metrics::Metrics;
use crate::upstream::Clients;

/// Rules for one container, with the policies they came from, their credentials and what lifts
/// the private-address guard for them (swapped together on a reload).
#[derive(Debug)]
pub struct Resolved {
    /// The rules.
    pub rules: RuleSet,
    /// Names of the policies (empty standalone).
    pub policies: Vec<String>,
    /// The credentials of those policies (standalone: of `--credential`).
    pub credentials: Arc<CredentialSet>,
    /// The policies' `resolve` pins and address rules (standalone: the address rules; the
    /// `--resolve` pins are the upstream's own).
    pub exemptions: Arc<Exemptions>,
    /// The HTTP clients whose pooled connections were opened under these exemptions.
    pub clients: Clients,
}

impl Resolved {
    /// Rules with their policies, credentials and `resolve` pins.
    pub fn new(
        rules: RuleSet,
        policies: Vec<String>,
        credentials: Arc<CredentialSet>,
        pins: HashMap<String, Vec<IpAddr>>,
    ) -> Resolved {
        let exemptions = Arc::new(Exemptions::new(rules.rules(), pins));
        Resolved {
            rules,
            policies,
            credentials,
            exemptions,
            clients: Clients::default(),
        }
    }
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

/// What a check of the files found.
#[derive(Debug)]
pub enum Reload {
    /// A new version is in force.
    Loaded,
    /// A new version was rejected; the previous one stays.
    Rejected(LoadError),
    /// The policy file disappeared; the previous version stays.
    Missing,
}

/// The current rules, swapped atomically on reload.
pub struct PolicyStore {
    source: Source,
    current: ArcSwap<Loaded>,
    fixed: Option<Arc<Resolved>>,
    /// The policy file is not there (deleted under a running pod, or never published).
    missing: AtomicBool,
    /// The pod's placeholder nonce (`BOUNDARY_PLACEHOLDER_NONCE`), for the credentials'
    /// placeholders.
    nonce: Option<String>,
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
                Some(Arc::new(Resolved::new(
                    (**rules).clone(),
                    Vec::new(),
                    Arc::default(),
                    HashMap::new(),
                ))),
            ),
            Source::File { policy, labels } => (read(policy, labels.as_deref())?, None),
        };
        Ok(PolicyStore {
            source,
            current: ArcSwap::from_pointee(loaded),
            fixed,
            missing: AtomicBool::new(false),
            nonce: None,
        })
    }

    /// The pod's placeholder nonce: the credentials' placeholders are made with it.
    #[must_use]
    pub fn with_placeholder_nonce(mut self, nonce: Option<String>) -> PolicyStore {
        self.nonce = nonce;
        self
    }

    /// Static rules with these credentials (`boundary run --credential`).
    #[must_use]
    pub fn with_credentials(mut self, credentials: CredentialSet) -> PolicyStore {
        if let Some(fixed) = &self.fixed {
            self.fixed = Some(Arc::new(Resolved::new(
                fixed.rules.clone(),
                fixed.policies.clone(),
                Arc::new(credentials),
                fixed.exemptions.pins.clone(),
            )));
        }
        self
    }

    /// A file source whose first version is missing or bad: deny everything until a good one
    /// appears (fail closed).
    pub fn deny_all(source: Source) -> PolicyStore {
        let missing = match &source {
            Source::File { policy, .. } => policy_file_missing(policy),
            Source::Static(_) => false,
        };
        PolicyStore {
            missing: AtomicBool::new(missing),
            source,
            current: ArcSwap::from_pointee(Loaded {
                compiled: None,
                hash: None,
                labels: BTreeMap::new(),
                fingerprint: Vec::new(),
                per_container: Mutex::new(HashMap::new()),
            }),
            fixed: None,
            nonce: None,
        }
    }

    /// Whether the policy file is missing now (the rules in force are the last ones loaded, or
    /// none).
    pub fn file_missing(&self) -> bool {
        self.missing.load(Ordering::Relaxed)
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
                Ok((rules, policies)) => Resolved::new(
                    rules,
                    policies,
                    Arc::new(credentials_of(
                        compiled,
                        &loaded.labels,
                        container,
                        self.nonce.as_deref(),
                    )),
                    compiled
                        .pins(&loaded.labels, container)
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                ),
                Err(_) => deny_everything(),
            },
            None => deny_everything(),
        });
        cache.insert(key, resolved.clone());
        resolved
    }

    /// Checks the files once; `None` when nothing changed (or the file is still missing).
    pub fn reload_if_changed(&self) -> Option<Reload> {
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
        // Keeps the version in force, remembering what was seen so it is reported once, not
        // every second.
        let keep = |fingerprint| {
            self.current.store(Arc::new(Loaded {
                compiled: current.compiled.clone(),
                hash: current.hash.clone(),
                labels: current.labels.clone(),
                fingerprint,
                per_container: Mutex::new(HashMap::new()),
            }));
        };
        if policy_file_missing(policy) {
            keep(now);
            let was_missing = self.missing.swap(true, Ordering::Relaxed);
            return (!was_missing).then_some(Reload::Missing);
        }
        self.missing.store(false, Ordering::Relaxed);
        match read(policy, labels.as_deref()) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                Some(Reload::Loaded)
            }
            Err(e) => {
                keep(now);
                Some(Reload::Rejected(e))
            }
        }
    }

    /// Reloads every second until the runtime stops; a vanished policy file is logged and
    /// audited (`policy-missing`) once, and so is its return (`policy-restored`).
    pub fn spawn_reloader(self: &Arc<Self>, metrics: Arc<Metrics>, events: Events) {
        if matches!(self.source, Source::Static(_)) {
            return;
        }
        metrics.policy_file_missing(self.file_missing());
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let was_missing = store.file_missing();
                let outcome = store.reload_if_changed();
                metrics.policy_file_missing(store.file_missing());
                if was_missing && !store.file_missing() {
                    tracing::info!("the policy file is back");
                    events.record(
                        "policy-restored",
                        None,
                        None,
                        serde_json::json!({"file": store.file_path()}),
                    );
                }
                match outcome {
                    Some(Reload::Loaded) => {
                        metrics.reload(true);
                        tracing::info!(policies = ?store.rules_for(None).policies, "policy reloaded");
                    }
                    Some(Reload::Rejected(e)) => {
                        metrics.reload(false);
                        tracing::error!(error = %e, "new policy rejected; keeping the previous one");
                    }
                    Some(Reload::Missing) => {
                        let hash = store.hash();
                        tracing::warn!(
                            file = store.file_path().unwrap_or_default(),
                            policy_hash = hash.as_deref().unwrap_or(""),
                            "the policy file is gone (its ConfigMap was deleted?); keeping the last policy loaded until it is back"
                        );
                        events.record(
                            "policy-missing",
                            None,
                            None,
                            serde_json::json!({
                                "file": store.file_path(),
                                "policyHash": hash,
                                "kept": if hash.is_some() { "last-loaded" } else { "deny-all" },
                            }),
                        );
                    }
                    None => {}
                }
            }
        });
    }

    /// The policy file's path (file sources).
    fn file_path(&self) -> Option<String> {
        match &self.source {
            Source::File { policy, .. } => Some(policy.display().to_string()),
            Source::Static(_) => None,
        }
    }
}

/// Whether `policy` is not there: the file or, for a ConfigMap key, its symlink's target.
fn policy_file_missing(policy: &Path) -> bool {
    matches!(std::fs::metadata(policy), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

fn deny_everything() -> Resolved {
    Resolved::new(
        RuleSet::new(Vec::new(), Mode::Enforce),
        Vec::new(),
        Arc::default(),
        HashMap::new(),
    )
}

/// The credentials of the entries selecting the pod, for `container`.
fn credentials_of(
    compiled: &CompiledPolicy,
    labels: &BTreeMap<String, String>,
    container: Option<&str>,
    nonce: Option<&str>,
) -> CredentialSet {
    let Ok(entries) = compiled.select(labels, container) else {
        return CredentialSet::default();
    };
    CredentialSet::new(
        entries
            .iter()
            .map(|e| (Some(e.name.as_str()), e.credentials.as_slice())),
        nonce,
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(allow: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "version": 1,
            "namespace": "agents",
            "policies": [{"name": "p", "podSelector": {}, "allow": [allow]}]
        }))
        .unwrap()
    }

    #[test]
    fn a_vanished_policy_file_keeps_the_last_policy_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.json");
        std::fs::write(&file, compiled("domain=a.test")).unwrap();
        let store = PolicyStore::load(Source::File {
            policy: file.clone(),
            labels: None,
        })
        .unwrap();
        let hash = store.hash().unwrap();
        assert!(!store.file_missing());

        std::fs::remove_file(&file).unwrap();
        assert!(matches!(store.reload_if_changed(), Some(Reload::Missing)));
        assert!(store.file_missing());
        assert_eq!(
            store.hash().as_deref(),
            Some(hash.as_str()),
            "still enforced"
        );
        assert_eq!(store.rules_for(None).policies, ["p"]);
        assert!(store.reload_if_changed().is_none(), "said once");

        std::fs::write(&file, compiled("domain=b.test")).unwrap();
        assert!(matches!(store.reload_if_changed(), Some(Reload::Loaded)));
        assert!(!store.file_missing());
        assert_ne!(
            store.hash().unwrap(),
            hash,
            "the new file is loaded as usual"
        );

        // A dangling ConfigMap key (its `..data` target gone) is missing too, not rejected.
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("..data/policy.json", &file).unwrap();
        assert!(matches!(store.reload_if_changed(), Some(Reload::Missing)));
        // A file that is there but bad is rejected, not missing.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, b"{").unwrap();
        assert!(matches!(
            store.reload_if_changed(),
            Some(Reload::Rejected(_))
        ));
        assert!(!store.file_missing());
    }

    #[test]
    fn a_sidecar_starting_without_a_policy_file_denies_all_and_says_the_file_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.json");
        let source = Source::File {
            policy: file.clone(),
            labels: None,
        };
        assert!(PolicyStore::load(source.clone()).is_err());
        let store = PolicyStore::deny_all(source);
        assert!(store.file_missing());
        assert!(store.hash().is_none());
        assert!(store.reload_if_changed().is_none(), "already said at start");
        std::fs::write(&file, compiled("domain=a.test")).unwrap();
        assert!(matches!(store.reload_if_changed(), Some(Reload::Loaded)));
        assert!(!store.file_missing());
    }
}

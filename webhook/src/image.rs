//! What an image runs: its config's `Entrypoint`, `Cmd` and `User`, read from its registry over
//! the OCI distribution API. Admission needs them to wrap a container that leaves its command to
//! the image, and to know whether a container runs as root.
//!
//! Lookups are cached: the config by (credential, repository, manifest digest, platform), kept
//! until evicted (a digest never changes); a tag's digest for a short TTL, so a moved tag is
//! seen soon. Credentials come from the pod's pull secrets ([`crate::pull_secrets`]); the cache
//! keys include which credential read an entry, so one namespace's secret never answers for
//! another's pod. Every lookup of one review shares one deadline ([`Resolver::resolve_all`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::ecr::{self, Ecr, EcrSettings};
use crate::pull_secrets::{Credential, Keyring};

/// What the planner learns from an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Digest of the platform's image manifest the config came from.
    pub digest: String,
    /// `Entrypoint` (empty: none).
    pub entrypoint: Vec<String>,
    /// `Cmd` (empty: none).
    pub cmd: Vec<String>,
    /// `User` (`""`: root).
    pub user: String,
}

impl ImageConfig {
    /// Whether the image's `USER` is root: empty, `root`, `0`, with any group. Named users
    /// other than `root` count as non-root (admission cannot read the image's `/etc/passwd`).
    pub fn user_is_root(&self) -> bool {
        let user = self.user.split(':').next().unwrap_or("").trim();
        user.is_empty() || user == "root" || user.parse::<u64>() == Ok(0)
    }
}

/// Why an image's config could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Not an image reference.
    #[error("it is not a valid image reference ({0})")]
    InvalidReference(String),
    /// No TCP connection or TLS session with the registry.
    #[error("registry {registry} is unreachable ({detail})")]
    Unreachable {
        /// `host[:port]`.
        registry: String,
        /// The connection error.
        detail: String,
    },
    /// 401/403 from the registry.
    #[error("registry {registry} answered 401 Unauthorized {}", unauthorized_hint(*with_credentials, problems))]
    Unauthorized {
        /// `host[:port]`.
        registry: String,
        /// Whether a pull secret had credentials for it.
        with_credentials: bool,
        /// Pull secrets that could not be used.
        problems: Vec<String>,
    },
    /// The repository, tag or digest does not exist.
    #[error("registry {registry} has no such image ({detail})")]
    NotFound {
        /// `host[:port]`.
        registry: String,
        /// The registry's answer.
        detail: String,
    },
    /// An image index without the node's platform.
    #[error("its image index has no linux/{arch} image (it has: {available})")]
    NoPlatform {
        /// The wanted architecture.
        arch: String,
        /// The platforms it has.
        available: String,
    },
    /// The lookups of this review ran out of time.
    #[error("the registry did not answer within the webhook's lookup budget of {budget_ms} ms")]
    Timeout {
        /// The budget.
        budget_ms: u128,
    },
    /// Anything else the registry answered.
    #[error("registry {registry} failed: {detail}")]
    Registry {
        /// `host[:port]`.
        registry: String,
        /// What happened.
        detail: String,
    },
}

impl ResolveError {
    /// The metric label of the cause.
    fn kind(&self) -> &'static str {
        match self {
            ResolveError::InvalidReference(_) => "invalid_reference",
            ResolveError::Unreachable { .. } => "unreachable",
            ResolveError::Unauthorized { .. } => "unauthorized",
            ResolveError::NotFound { .. } => "not_found",
            ResolveError::NoPlatform { .. } => "no_platform",
            ResolveError::Timeout { .. } => "timeout",
            ResolveError::Registry { .. } => "registry_error",
        }
    }
}

/// The results counted in `agent_boundary_webhook_image_lookups_total`.
const LOOKUP_RESULTS: [&str; 8] = [
    "ok",
    "invalid_reference",
    "unreachable",
    "unauthorized",
    "not_found",
    "no_platform",
    "timeout",
    "registry_error",
];

/// Labels of `agent_boundary_webhook_image_lookups_total`: one of [`LOOKUP_RESULTS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

fn unauthorized_hint(with_credentials: bool, problems: &[String]) -> String {
    let mut hint = if with_credentials {
        "to the credentials it was given (the pod's pull secrets; for ECR also the webhook's own token)"
            .to_owned()
    } else {
        "and no imagePullSecret of the pod or its ServiceAccount has credentials for it".to_owned()
    };
    if !problems.is_empty() {
        let _ = write!(hint, " ({})", problems.join("; "));
    }
    hint
}

/// How lookups are made.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// Time for all lookups of one review.
    pub budget: Duration,
    /// How long a tag's digest is trusted.
    pub tag_ttl: Duration,
    /// Registries (`host[:port]`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// CA certificates (DER) trusted for registries besides Mozilla's roots.
    pub extra_roots: Vec<Vec<u8>>,
    /// Architecture picked from image indexes when the pod does not name one.
    pub default_arch: String,
    /// Configs kept in memory.
    pub config_cache_entries: usize,
    /// ECR registries with the webhook's own AWS identity (`None`: not asked).
    pub ecr: Option<EcrSettings>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            budget: Duration::from_secs(4),
            tag_ttl: Duration::from_mins(1),
            insecure_registries: Vec::new(),
            extra_roots: Vec::new(),
            default_arch: "amd64".into(),
            config_cache_entries: 4096,
            ecr: None,
        }
    }
}

/// A bounded map that evicts the least recently used entry.
#[derive(Debug)]
struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    tick: u64,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Lru<K, V> {
    fn new(capacity: usize) -> Self {
        Lru {
            entries: HashMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(v, used)| {
            *used = tick;
            v.clone()
        })
    }

    fn insert(&mut self, key: K, value: V) {
        self.tick += 1;
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            // A linear scan: it runs only on inserting into a full cache of a few thousand.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, self.tick));
    }
}

/// Which credential read an entry: a hash, so the caches hold no secrets.
type CredentialId = String;

fn credential_id(registry: &str, credential: Option<&Credential>) -> CredentialId {
    let Some(c) = credential else {
        return format!("anonymous@{registry}");
    };
    let mut hash = Sha256::new();
    hash.update(registry.as_bytes());
    hash.update([0]);
    hash.update(c.username.as_bytes());
    hash.update([0]);
    hash.update(c.password.as_bytes());
    hash.finalize()
        .iter()
        .take(16)
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TagKey {
    credential: CredentialId,
    repository: String,
    tag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ConfigKey {
    credential: CredentialId,
    repository: String,
    /// The digest the reference names or its tag points to (manifest or index).
    digest: String,
    arch: String,
}

/// Clients kept per credential: oci-client remembers the first credential a client used for a
/// registry, and its bearer tokens, so a client is never shared between credentials.
const MAX_CLIENTS: usize = 256;

/// Reads image configs from registries, with caches.
pub struct Resolver {
    config: ResolverConfig,
    clients: Mutex<HashMap<CredentialId, Client>>,
    tags: Mutex<HashMap<TagKey, (String, Instant)>>,
    configs: Mutex<Lru<ConfigKey, ImageConfig>>,
    registry_requests: Counter,
    lookups: Family<LookupLabels, Counter>,
    metrics: Registry,
    ecr: Option<Ecr>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<ConfigSection>,
}

#[derive(Deserialize)]
struct ConfigSection {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves a usable cache.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sorts an oci-client error into the causes a person can act on.
fn classify(error: OciDistributionError, registry: &str, with_credentials: bool) -> ResolveError {
    let registry = registry.to_owned();
    let unauthorized = || ResolveError::Unauthorized {
        registry: registry.clone(),
        with_credentials,
        problems: Vec::new(),
    };
    match error {
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            ResolveError::Unreachable {
                registry,
                detail: crate::error_text::chain(&e),
            }
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => unauthorized(),
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized()
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ResolveError::NotFound {
                    registry,
                    detail: format!("{url}: {envelope}"),
                }
            } else {
                ResolveError::Registry {
                    registry,
                    detail: format!("{url}: {envelope}"),
                }
            }
        }
        OciDistributionError::ServerError { code, url, message } => match code {
            401 | 403 => unauthorized(),
            404 => ResolveError::NotFound {
                registry,
                detail: format!("{url}: HTTP 404"),
            },
            _ => ResolveError::Registry {
                registry,
                detail: format!("{url}: HTTP {code} {}", message.trim()),
            },
        },
        OciDistributionError::ImageManifestNotFoundError(detail) => {
            ResolveError::NotFound { registry, detail }
        }
        other => ResolveError::Registry {
            registry,
            detail: crate::error_text::chain(&other),
        },
    }
}

fn platform_of(entry: &ImageIndexEntry) -> String {
    entry.platform.as_ref().map_or_else(
        || "unknown".to_owned(),
        |p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        },
    )
}

/// The linux image of `arch` (`amd64`, `arm64`, `arm/v7`) in an index.
fn pick_platform<'a>(entries: &'a [ImageIndexEntry], arch: &str) -> Option<&'a ImageIndexEntry> {
    let (arch, variant) = arch.split_once('/').unwrap_or((arch, ""));
    entries.iter().find(|e| {
        e.platform.as_ref().is_some_and(|p| {
            p.os.to_string() == "linux"
                && p.architecture.to_string() == arch
                && (variant.is_empty() || p.variant.as_deref() == Some(variant))
        })
    })
}

/// The config of `manifest` (an image, or an index to pick `arch` from).
async fn fetch_config(
    client: &Client,
    target: &Reference,
    manifest: OciManifest,
    digest: &str,
    arch: &str,
    auth: &RegistryAuth,
    fail: &(dyn Fn(OciDistributionError) -> ResolveError + Sync),
) -> Result<ImageConfig, ResolveError> {
    let (image_manifest, image_digest) = match manifest {
        OciManifest::Image(m) => (m, digest.to_owned()),
        OciManifest::ImageIndex(index) => {
            let entry =
                pick_platform(&index.manifests, arch).ok_or_else(|| ResolveError::NoPlatform {
                    arch: arch.to_owned(),
                    available: index
                        .manifests
                        .iter()
                        .map(platform_of)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let platform = target.clone_with_digest(entry.digest.clone());
            match client.pull_manifest(&platform, auth).await.map_err(fail)? {
                (OciManifest::Image(m), d) => (m, d),
                (OciManifest::ImageIndex(_), _) => {
                    return Err(ResolveError::Registry {
                        registry: target.registry().to_owned(),
                        detail: format!(
                            "the linux/{arch} entry {} of the index is another index",
                            entry.digest
                        ),
                    });
                }
            }
        }
    };
    let mut blob = Vec::new();
    client
        .pull_blob(target, &image_manifest.config, &mut blob)
        .await
        .map_err(fail)?;
    let parsed: ConfigBlob = serde_json::from_slice(&blob).map_err(|e| ResolveError::Registry {
        registry: target.registry().to_owned(),
        detail: format!(
            "the image config {} is not JSON: {e}",
            image_manifest.config.digest
        ),
    })?;
    let section = parsed.config.unwrap_or(ConfigSection {
        entrypoint: None,
        cmd: None,
        user: None,
    });
    let config = ImageConfig {
        digest: image_digest,
        entrypoint: section.entrypoint.unwrap_or_default(),
        cmd: section.cmd.unwrap_or_default(),
        user: section.user.unwrap_or_default(),
    };
    Ok(config)
}

/// Mozilla's root certificates (webpki-root-certs), for registries over HTTPS.
fn mozilla_roots() -> Vec<oci_client::client::Certificate> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|der| oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Der,
            data: der.to_vec(),
        })
        .collect()
}

impl Resolver {
    /// A resolver with empty caches.
    pub fn new(config: ResolverConfig) -> Self {
        // reqwest's rustls needs a process-wide provider; the webhook uses aws-lc throughout. An
        // error means one is installed already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let registry_requests = Counter::default();
        let lookups = Family::<LookupLabels, Counter>::default();
        for result in LOOKUP_RESULTS {
            let _ = lookups.get_or_create(&LookupLabels { result });
        }
        // The registry appends the final full stop of each help text.
        let mut metrics = Registry::with_prefix(crate::metrics::PREFIX);
        metrics.register(
            "image_lookups",
            "Image configs looked up for reviews, by result",
            lookups.clone(),
        );
        metrics.register(
            "image_registry_requests",
            "Image lookups not answered from the caches",
            registry_requests.clone(),
        );
        Resolver {
            ecr: config.ecr.clone().map(Ecr::new),
            configs: Mutex::new(Lru::new(config.config_cache_entries)),
            config,
            clients: Mutex::new(HashMap::new()),
            tags: Mutex::new(HashMap::new()),
            registry_requests,
            lookups,
            metrics,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// How many image lookups reached a registry (not answered from the caches).
    pub fn registry_lookups(&self) -> u64 {
        self.registry_requests.get()
    }

    /// Prometheus text of the lookups (appended to the webhook's `/metrics`).
    pub fn render_metrics(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(out, &self.metrics);
    }

    fn client(&self, id: &CredentialId) -> Client {
        let mut clients = lock(&self.clients);
        if let Some(client) = clients.get(id) {
            return client.clone();
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let client =
            Client::new(oci_client::client::ClientConfig {
                protocol: if self.config.insecure_registries.is_empty() {
                    oci_client::client::ClientProtocol::Https
                } else {
                    oci_client::client::ClientProtocol::HttpsExcept(
                        self.config.insecure_registries.clone(),
                    )
                },
                // Index entries are picked here, per pod.
                platform_resolver: None,
                // The image is `FROM scratch`: no system trust store, so Mozilla's roots.
                tls_certs_only: mozilla_roots()
                    .into_iter()
                    .chain(self.config.extra_roots.iter().map(|der| {
                        oci_client::client::Certificate {
                            encoding: oci_client::client::CertificateEncoding::Der,
                            data: der.clone(),
                        }
                    }))
                    .collect(),
                connect_timeout: Some(self.config.budget),
                read_timeout: Some(self.config.budget),
                ..oci_client::client::ClientConfig::default()
            });
        clients.insert(id.clone(), client.clone());
        client
    }

    /// Resolves every `(key, image)` concurrently within the budget; `arch` (`None`: the
    /// default) picks from image indexes.
    pub async fn resolve_all<K: Ord + Clone>(
        &self,
        images: &[(K, String)],
        arch: Option<&str>,
        keyring: &Keyring,
        started: Instant,
    ) -> BTreeMap<K, Result<ImageConfig, ResolveError>> {
        let deadline = tokio::time::Instant::from_std(started + self.config.budget);
        let arch = arch.unwrap_or(&self.config.default_arch);
        let lookups = images.iter().map(|(key, image)| async move {
            let result =
                match tokio::time::timeout_at(deadline, self.resolve(image, arch, keyring)).await {
                    Ok(result) => result,
                    Err(_) => Err(ResolveError::Timeout {
                        budget_ms: self.config.budget.as_millis(),
                    }),
                };
            let label = result.as_ref().map_or_else(ResolveError::kind, |_| "ok");
            if let Some(result) = LOOKUP_RESULTS.iter().find(|r| **r == label) {
                self.lookups.get_or_create(&LookupLabels { result }).inc();
            }
            (key.clone(), result)
        });
        futures_util::future::join_all(lookups)
            .await
            .into_iter()
            .collect()
    }

    /// Resolves one image: the pod's credentials for its registry in turn (most specific
    /// first), then the webhook's own for ECR, then anonymous, until one is not refused.
    pub async fn resolve(
        &self,
        image: &str,
        arch: &str,
        keyring: &Keyring,
    ) -> Result<ImageConfig, ResolveError> {
        let reference: Reference = image
            .parse()
            .map_err(|e: oci_client::ParseError| ResolveError::InvalidReference(e.to_string()))?;
        let registry = reference.registry().to_owned();
        let mut attempts: Vec<Option<Credential>> = keyring
            .lookup(&registry, reference.repository())
            .into_iter()
            .map(|(_, c)| Some(c.clone()))
            .collect();
        let mut problems = keyring.problems.clone();
        if let Some(ecr) = &self.ecr
            && ecr::registry_of(&registry).is_some()
        {
            match ecr.credential(&registry).await {
                Ok(credential) => attempts.push(Some(credential)),
                Err(problem) => problems.push(problem),
            }
        }
        let with_credentials = !attempts.is_empty();
        attempts.push(None);
        for credential in attempts {
            match self
                .resolve_as(&reference, arch, credential.as_ref(), with_credentials)
                .await
            {
                Err(ResolveError::Unauthorized { .. }) => {}
                other => return other,
            }
        }
        Err(ResolveError::Unauthorized {
            registry,
            with_credentials,
            problems,
        })
    }

    async fn resolve_as(
        &self,
        reference: &Reference,
        arch: &str,
        credential: Option<&Credential>,
        with_credentials: bool,
    ) -> Result<ImageConfig, ResolveError> {
        let registry = reference.registry();
        let id = credential_id(reference.resolve_registry(), credential);
        let repository = format!("{registry}/{}", reference.repository());
        let config_key = |digest: &str| ConfigKey {
            credential: id.clone(),
            repository: repository.clone(),
            digest: digest.to_owned(),
            arch: arch.to_owned(),
        };
        let tag_key = reference.digest().is_none().then(|| TagKey {
            credential: id.clone(),
            repository: repository.clone(),
            tag: reference.tag().unwrap_or("latest").to_owned(),
        });
        // A digest-pinned reference, or a tag seen within the TTL: maybe no request at all.
        let known_digest = match &tag_key {
            None => reference.digest().map(str::to_owned),
            Some(key) => lock(&self.tags)
                .get(key)
                .filter(|(_, at)| at.elapsed() < self.config.tag_ttl)
                .map(|(digest, _)| digest.clone()),
        };
        if let Some(digest) = &known_digest
            && let Some(found) = lock(&self.configs).get(&config_key(digest))
        {
            return Ok(found);
        }
        self.registry_requests.inc();
        let auth = credential.map_or(RegistryAuth::Anonymous, |c| {
            RegistryAuth::Basic(c.username.clone(), c.password.clone())
        });
        let client = self.client(&id);
        let fail = |e| classify(e, registry, with_credentials);
        let fail: &(dyn Fn(OciDistributionError) -> ResolveError + Sync) = &fail;
        let target = match &known_digest {
            Some(d) => reference.clone_with_digest(d.clone()),
            None => reference.clone(),
        };
        let (manifest, digest) = client.pull_manifest(&target, &auth).await.map_err(fail)?;
        if let Some(key) = tag_key {
            let mut tags = lock(&self.tags);
            // Expired entries go when the map grows (tags are few; this is rare), and all of
            // them if that is not enough: it only costs a request per tag.
            let bound = 4 * self.config.config_cache_entries;
            if tags.len() > bound {
                tags.retain(|_, (_, at)| at.elapsed() < self.config.tag_ttl);
                if tags.len() > bound {
                    tags.clear();
                }
            }
            tags.insert(key, (digest.clone(), Instant::now()));
        }
        if let Some(found) = lock(&self.configs).get(&config_key(&digest)) {
            return Ok(found);
        }
        let config = fetch_config(&client, &target, manifest, &digest, arch, &auth, fail).await?;
        lock(&self.configs).insert(config_key(&digest), config.clone());
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_users_are_recognised() {
        for (user, root) in [
            ("", true),
            ("root", true),
            ("0", true),
            ("0:0", true),
            ("root:wheel", true),
            ("1000", false),
            ("65532:65532", false),
            ("node", false),
        ] {
            let config = ImageConfig {
                user: user.into(),
                ..ImageConfig::default()
            };
            assert_eq!(config.user_is_root(), root, "{user}");
        }
    }

    #[test]
    fn the_least_recently_used_entry_is_evicted() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get(&"a"), Some(1));
        lru.insert("c", 3);
        assert_eq!(lru.get(&"b"), None);
        assert_eq!(lru.get(&"a"), Some(1));
        assert_eq!(lru.get(&"c"), Some(3));
    }

    #[test]
    fn messages_name_the_cause() {
        let e = ResolveError::Unauthorized {
            registry: "r.example".into(),
            with_credentials: false,
            problems: vec!["Secret x does not exist".into()],
        };
        let text = e.to_string();
        assert!(text.contains("401 Unauthorized"), "{text}");
        assert!(text.contains("no imagePullSecret"), "{text}");
        assert!(text.contains("Secret x does not exist"), "{text}");
    }
}

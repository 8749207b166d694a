//! Registry credentials from a pod's image pull secrets, matched to a registry the way the
//! kubelet matches them: `kubernetes.io/dockerconfigjson` (`{"auths": {KEY: ...}}`) and
//! `kubernetes.io/dockercfg` (`{KEY: ...}`) Secrets, a KEY being `host[:port][/path]` with an
//! optional scheme, `*` globs per host label, `/v1/` and `/v2/` meaning the whole host, and
//! Docker Hub's names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) as one.
//!
//! Reading the Secrets ([`read_for_pod`]) is the only part that talks to the apiserver.

use std::collections::BTreeSet;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use serde::Deserialize;

/// `type` of a Secret holding a `.docker/config.json`.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// Its data key.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// `type` of a Secret holding a legacy `.dockercfg`.
pub const DOCKERCFG: &str = "kubernetes.io/dockercfg";
/// Its data key.
pub const DOCKERCFG_KEY: &str = ".dockercfg";

/// The canonical name of Docker Hub's registry.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ALIASES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One entry of a docker config: where it applies, and the credential.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Host labels (lower case, globs allowed), canonical for Docker Hub.
    host: Vec<String>,
    port: Option<String>,
    /// Repository path prefix (without leading or trailing `/`), empty for the whole host.
    path: String,
    /// The Secret it came from, for messages.
    source: String,
    credential: Credential,
}

/// Credentials of a pod: every usable entry of its pull secrets, and what could not be read.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    entries: Vec<Entry>,
    /// Secrets that were named but could not be used (missing, wrong type, unreadable).
    pub problems: Vec<String>,
}

/// Why a docker config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PullSecretError {
    /// Not the JSON of a docker config.
    #[error("is not a docker config: {0}")]
    Json(#[from] serde_json::Error),
    /// An `auth` field that is not base64 of `user:password`.
    #[error("has an auth entry for {0} that is not base64 of user:password")]
    Auth(String),
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Splits a docker config key into host labels, port and path (the kubelet's rules).
fn parse_key(key: &str) -> Option<(Vec<String>, Option<String>, String)> {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (h, Some(p.to_owned()))
        }
        _ => (authority, None),
    };
    if host.is_empty() {
        return None;
    }
    let mut path = path.trim_matches('/');
    // The docker client treats `/v1/` and `/v2/` as the registry itself.
    for api in ["v1", "v2"] {
        if path == api {
            path = "";
        } else if let Some(p) = path.strip_prefix(&format!("{api}/")) {
            path = p;
        }
    }
    Some((host_labels(host), port, path.to_owned()))
}

fn host_labels(host: &str) -> Vec<String> {
    let host = host.to_ascii_lowercase();
    let host = if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_owned()
    } else {
        host
    };
    host.split('.').map(str::to_owned).collect()
}

/// `*` in a host label matches any run of characters within that label.
fn label_matches(pattern: &str, label: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == label;
    };
    let Some(mut remaining) = label.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

impl Keyring {
    /// Adds the entries of one Secret's docker config (`legacy`: the `.dockercfg` shape).
    pub fn add_docker_config(
        &mut self,
        source: &str,
        data: &[u8],
        legacy: bool,
    ) -> Result<(), PullSecretError> {
        let auths = if legacy {
            serde_json::from_slice(data)?
        } else {
            serde_json::from_slice::<DockerConfigJson>(data)?.auths
        };
        for (key, auth) in auths {
            let credential = match (auth.username, auth.password, auth.auth) {
                (Some(username), Some(password), _) if !username.is_empty() => {
                    Credential { username, password }
                }
                (_, _, Some(encoded)) if !encoded.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(encoded.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| PullSecretError::Auth(key.clone()))?;
                    let (username, password) = decoded
                        .split_once(':')
                        .ok_or_else(|| PullSecretError::Auth(key.clone()))?;
                    Credential {
                        username: username.to_owned(),
                        password: password.to_owned(),
                    }
                }
                // Entries without credentials (e.g. only an identity token) give nothing.
                _ => continue,
            };
            if let Some((host, port, path)) = parse_key(&key) {
                self.entries.push(Entry {
                    host,
                    port,
                    path,
                    source: source.to_owned(),
                    credential,
                });
            }
        }
        Ok(())
    }

    /// The credentials for `registry` (`host[:port]` of an image reference) and `repository`,
    /// most specific first (longer path, then exact host before globs), without duplicates.
    pub fn lookup(&self, registry: &str, repository: &str) -> Vec<(&str, &Credential)> {
        let Some((host, port, _)) = parse_key(registry) else {
            return Vec::new();
        };
        let repository = repository.trim_matches('/');
        let mut found: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| {
                e.host.len() == host.len()
                    && e.host.iter().zip(&host).all(|(p, l)| label_matches(p, l))
                    && e.port == port
                    && (e.path.is_empty()
                        || repository == e.path
                        || repository.starts_with(&format!("{}/", e.path)))
            })
            .collect();
        found.sort_by_key(|e| {
            (
                std::cmp::Reverse(e.path.len()),
                e.host.iter().any(|l| l.contains('*')),
            )
        });
        let mut seen = BTreeSet::new();
        found
            .into_iter()
            .filter(|e| seen.insert((&e.credential.username, &e.credential.password)))
            .map(|e| (e.source.as_str(), &e.credential))
            .collect()
    }

    /// Whether no Secret gave a usable entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The names of the pull secrets of a pod and of its ServiceAccount (the pod's first).
fn secret_names(pod: &Pod, account: Option<&ServiceAccount>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let from_pod = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref());
    let from_account = account.and_then(|a| a.image_pull_secrets.as_ref());
    for reference in from_pod.into_iter().chain(from_account).flatten() {
        if !reference.name.is_empty() && !names.contains(&reference.name) {
            names.push(reference.name.clone());
        }
    }
    names
}

/// Adds one Secret to the keyring, or says why it cannot be used.
pub fn add_secret(keyring: &mut Keyring, secret: &Secret) {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let source = format!("Secret {name}");
    let data = secret.data.as_ref();
    let (key, legacy) = match secret.type_.as_deref() {
        Some(DOCKER_CONFIG_JSON) => (DOCKER_CONFIG_JSON_KEY, false),
        Some(DOCKERCFG) => (DOCKERCFG_KEY, true),
        other => {
            keyring.problems.push(format!(
                "{source} has type {}, not {DOCKER_CONFIG_JSON} or {DOCKERCFG}",
                other.unwrap_or("Opaque")
            ));
            return;
        }
    };
    let Some(bytes) = data.and_then(|d| d.get(key)) else {
        keyring.problems.push(format!("{source} has no {key}"));
        return;
    };
    if let Err(e) = keyring.add_docker_config(&source, &bytes.0, legacy) {
        keyring.problems.push(format!("{source} {e}"));
    }
}

/// Reads the pull secrets of `pod` (namespace `namespace`) and of its ServiceAccount. Missing
/// or unreadable ones are noted in [`Keyring::problems`] (the kubelet also pulls without them).
pub async fn read_for_pod(client: &kube::Client, namespace: &str, pod: &Pod) -> Keyring {
    let mut keyring = Keyring::default();
    let account_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
    let account = match accounts.get_opt(&account_name).await {
        Ok(account) => account,
        Err(e) => {
            keyring.problems.push(format!(
                "ServiceAccount {account_name} could not be read: {e}"
            ));
            None
        }
    };
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    for name in secret_names(pod, account.as_ref()) {
        match secrets.get_opt(&name).await {
            Ok(Some(secret)) => add_secret(&mut keyring, &secret),
            Ok(None) => keyring
                .problems
                .push(format!("Secret {name} does not exist")),
            Err(e) => keyring
                .problems
                .push(format!("Secret {name} could not be read: {e}")),
        }
    }
    keyring
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(config: &str) -> Keyring {
        let mut k = Keyring::default();
        k.add_docker_config("Secret s", config.as_bytes(), false)
            .unwrap();
        k
    }

    fn users(k: &Keyring, registry: &str, repository: &str) -> Vec<String> {
        k.lookup(registry, repository)
            .into_iter()
            .map(|(_, c)| c.username.clone())
            .collect()
    }

    #[test]
    fn hosts_ports_paths_and_globs_match_like_the_kubelet() {
        let k = keyring(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnB3"},
                "registry.example:5000": {"username": "port", "password": "p"},
                "registry.example": {"username": "plain", "password": "p"},
                "registry.example/team": {"username": "team", "password": "p"},
                "*.dkr.ecr.eu-west-1.amazonaws.com": {"username": "AWS", "password": "t"},
                "only-token.example": {"identitytoken": "x"}
            }}"#,
        );
        assert_eq!(users(&k, "docker.io", "library/alpine"), ["hub"]);
        assert_eq!(users(&k, "index.docker.io", "library/alpine"), ["hub"]);
        assert_eq!(users(&k, "registry.example:5000", "a"), ["port"]);
        assert_eq!(
            users(&k, "registry.example", "team/agent"),
            ["team", "plain"]
        );
        assert_eq!(users(&k, "registry.example", "teamster/agent"), ["plain"]);
        assert_eq!(users(&k, "REGISTRY.example", "x"), ["plain"]);
        assert_eq!(
            users(&k, "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "agent"),
            ["AWS"]
        );
        assert!(users(&k, "dkr.ecr.eu-west-1.amazonaws.com", "agent").is_empty());
        assert!(users(&k, "only-token.example", "a").is_empty());
        assert!(users(&k, "other.example", "a").is_empty());
    }

    #[test]
    fn legacy_dockercfg_and_bad_secrets_are_handled() {
        let mut k = Keyring::default();
        k.add_docker_config(
            "Secret old",
            br#"{"registry.example": {"auth": "b2xkOnB3"}}"#,
            true,
        )
        .unwrap();
        assert_eq!(users(&k, "registry.example", "x"), ["old"]);
        let err = k
            .add_docker_config("Secret bad", br#"{"auths": {"r": {"auth": "!!"}}}"#, false)
            .unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
        let mut opaque = Secret::default();
        opaque.metadata.name = Some("opaque".into());
        add_secret(&mut k, &opaque);
        assert!(
            k.problems[0].contains("Secret opaque has type Opaque"),
            "{:?}",
            k.problems
        );
    }

    #[test]
    fn globs_stay_within_a_label() {
        assert!(label_matches("*", "abc"));
        assert!(label_matches("a*c", "abbc"));
        assert!(label_matches("*-ecr", "x-ecr"));
        assert!(!label_matches("a*c", "abd"));
        assert!(!label_matches("abc", "abcd"));
    }
}

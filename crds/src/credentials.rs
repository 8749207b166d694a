//! Credentials the agent never holds (`spec.credentials[]`): the API shape, the placeholders the
//! jailed containers see instead of the real values, and the value file the sidecar reads.
//!
//! The real values live only in the namespace Secret the operator writes
//! ([`crate::contract::objects::CREDENTIALS_SECRET`]), mounted into the sidecar only; each
//! credential's value is one key of it ([`value_key`]) holding a [`CredentialValue`] as JSON.
//! The jailed containers get, in the credential's `env`, a placeholder made of
//! [`PLACEHOLDER_PREFIX`], a per-pod nonce and the credential's name; the sidecar knows the
//! nonce (`BOUNDARY_PLACEHOLDER_NONCE`) and so every placeholder of its pod.
//!
//! The doc comments on these types become the CRD's `kubectl explain` text.

use serde::{Deserialize, Serialize};

use crate::policy::Port;

/// One credential the proxy puts into requests to its destinations, so the agent never holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// Name of the credential, unique in the policy: lower-case letters, digits and `-`
    /// (a DNS label). It appears in audit records and in the placeholder.
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 63)))]
    pub name: String,
    /// The Secret key (in the policy's namespace) holding the real value, for `header` and
    /// `basicAuth`. Only the operator reads it; the value reaches the pod's sidecar only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// Where the credential is put in: requests whose host matches one of `domains` and, where
    /// given, whose method, path and port match too (the matcher of `spec.http` rules). Only over
    /// TLS the proxy intercepts; the destination must also be allowed by the policy's rules.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub destinations: Vec<CredentialDestination>,
    /// How the credential is put into a request: exactly one of `header`, `basicAuth`,
    /// `awsSigV4`.
    pub inject: Injection,
    /// The environment variable through which the jailed containers see the credential's
    /// placeholder (e.g. `ANTHROPIC_API_KEY`, `GITHUB_TOKEN`). For `awsSigV4` the placeholders
    /// are always in `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, and this field is not
    /// used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// A key of a Secret in the policy's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub name: String,
    /// The key in the Secret's `data`.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub key: String,
}

/// Requests a credential is put into. Empty `methods`, `paths` or `ports`: any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct CredentialDestination {
    /// Host names, with the wildcards of `spec.http` rules (`*.example.com`).
    #[cfg_attr(feature = "kube", schemars(length(min = 1), inner(length(min = 1))))]
    pub domains: Vec<String>,
    /// HTTP methods (e.g. GET, POST). Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(inner(length(min = 1))))]
    pub methods: Vec<String>,
    /// URL paths, as in `spec.http` rules. Empty: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(inner(length(min = 1))))]
    pub paths: Vec<String>,
    /// Destination ports. Empty: any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// How a credential is put into a request. Exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Injection {
    /// Set a request header to the value, e.g. `{name: x-api-key}` or
    /// `{name: Authorization, format: "Bearer {value}"}`. A placeholder the client put anywhere
    /// in the request's headers or URL is replaced by the value too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderInjection>,
    /// HTTP basic authentication (`Authorization: Basic ...`) with `username` and the Secret's
    /// value as the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthInjection>,
    /// AWS Signature Version 4 (Amazon Bedrock, S3, any AWS API): the agent signs with the
    /// placeholder keys it finds in `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`; the proxy
    /// signs the request again with the real credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_sig_v4: Option<AwsSigV4Injection>,
}

/// A header set to the credential.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HeaderInjection {
    /// The header's name, e.g. `Authorization` or `x-api-key`.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub name: String,
    /// The header's value, with `{value}` where the credential goes (exactly once). Default:
    /// `{value}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// HTTP basic authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthInjection {
    /// The user name; the password is the credential's value.
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub username: String,
}

/// AWS request signing. Exactly one of `secretName` and `identity`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AwsSigV4Injection {
    /// A Secret in the policy's namespace with the keys `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// `Sidecar`: sign with the sidecar's own AWS identity (EKS Pod Identity or IRSA web
    /// identity of the pod's service account, the default credential chain), which the jailed
    /// containers never see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<AwsIdentity>,
}

/// Whose AWS identity signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum AwsIdentity {
    /// The sidecar container's default AWS credential chain.
    Sidecar,
}

/// How a credential is applied, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Apply<'a> {
    /// `name: format-with-value`.
    Header {
        /// Header name.
        name: &'a str,
        /// Format, `{value}` where the value goes.
        format: &'a str,
    },
    /// `Authorization: Basic base64(username:value)`.
    Basic {
        /// The user name.
        username: &'a str,
    },
    /// AWS `SigV4` re-signing.
    SigV4 {
        /// Where the real keys come from.
        source: AwsSource<'a>,
    },
}

/// Where the real AWS keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AwsSource<'a> {
    /// The namespace Secret of this name (copied into the credentials Secret by the operator).
    Secret(&'a str),
    /// The sidecar's own identity.
    Sidecar,
}

/// The default header format.
pub const DEFAULT_FORMAT: &str = "{value}";
/// Where the value goes in a header format.
pub const VALUE_MARK: &str = "{value}";

/// The keys an `awsSigV4.secretName` Secret holds.
pub mod aws_keys {
    /// Access key id.
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// Secret access key.
    pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// Optional session token.
    pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
}

/// A problem with one credential, for the policy's status: `field` relative to the credential
/// (e.g. `inject`) from [`Credential::apply`], `spec.credentials[i]…` from [`check_policy`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CredentialProblem {
    /// The field.
    pub field: String,
    /// The column in a rule string (destination domains and paths), when known.
    pub column: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn problem(field: &str, message: impl Into<String>) -> CredentialProblem {
    CredentialProblem {
        field: field.to_owned(),
        column: None,
        message: message.into(),
    }
}

/// Longest Secret key (the credentials Secret holds one key per credential).
const MAX_SECRET_KEY: usize = 253;

/// The credentials of one policy, checked: what the operator publishes and the webhook hands
/// placeholders for (the same check on both sides, so no pod gets a placeholder the proxy does
/// not know).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckedCredentials {
    /// The valid ones, in spec order.
    pub valid: Vec<Credential>,
    /// Names of the withheld ones.
    pub withheld: Vec<String>,
    /// Every problem, at `spec.credentials[i]…`.
    pub problems: Vec<CredentialProblem>,
}

/// Checks the credentials of policy `policy`, each on its own: [`Credential::apply`], at least
/// one destination, destinations the rule engine compiles (problems at
/// `spec.credentials[i].destinations[j]…`), a value key a Secret can hold, and a name or
/// environment variable used twice (reported at the later credential, which is withheld).
pub fn check_policy(policy: &str, credentials: &[Credential]) -> CheckedCredentials {
    let mut out = CheckedCredentials::default();
    let mut names: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let mut envs: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (i, credential) in credentials.iter().enumerate() {
        let at = |sub: &str, column: Option<usize>, message: String| CredentialProblem {
            field: format!("spec.credentials[{i}].{sub}"),
            column,
            message,
        };
        let mut found = Vec::new();
        if let Err(problems) = credential.apply() {
            found.extend(problems.into_iter().map(|p| at(&p.field, None, p.message)));
        }
        if credential.destinations.is_empty() {
            found.push(at(
                "destinations",
                None,
                "at least one destination is required: where the credential is put in".into(),
            ));
        }
        let http = credential.destination_rules();
        if let Err(crate::rules::CompileErrors(problems)) =
            crate::rules::compile(crate::rules::RuleSource {
                policy: Some(policy),
                field_prefix: "",
                http: &http,
                ..crate::rules::RuleSource::default()
            })
        {
            // `http[j]…` of the rule engine is `destinations[j]…` here.
            found.extend(problems.into_iter().map(|p| {
                let rest = p.field.strip_prefix("http").unwrap_or(&p.field);
                at(&format!("destinations{rest}"), p.column, p.message)
            }));
        }
        if value_key(policy, &credential.name).len() > MAX_SECRET_KEY {
            found.push(at(
                "name",
                None,
                format!(
                    "the policy's and the credential's names together are longer than a Secret \
                     key may be ({MAX_SECRET_KEY}); use a shorter name"
                ),
            ));
        }
        match names.get(credential.name.as_str()) {
            Some(first) => found.push(at(
                "name",
                None,
                format!(
                    "{:?} is also the name of spec.credentials[{first}]: names are unique in a \
                     policy",
                    credential.name
                ),
            )),
            None => {
                names.insert(&credential.name, i);
            }
        }
        let env_field = if credential.inject.aws_sig_v4.is_some() {
            "inject.awsSigV4"
        } else {
            "env"
        };
        for (env, _) in credential.placeholder_env("") {
            match envs.get(&env) {
                Some(first) => found.push(at(
                    env_field,
                    None,
                    format!(
                        "{env} is also set by spec.credentials[{first}]: a container can hold \
                         only one placeholder in it"
                    ),
                )),
                None => {
                    envs.insert(env, i);
                }
            }
        }
        if found.is_empty() {
            out.valid.push(credential.clone());
        } else {
            out.withheld.push(credential.name.clone());
            out.problems.extend(found);
        }
    }
    out
}

impl Credential {
    /// How the credential is applied, or the problems that make it unusable (every one, with the
    /// field it is in). Destinations are checked by the rule engine, not here.
    pub fn apply(&self) -> Result<Apply<'_>, Vec<CredentialProblem>> {
        let mut problems = Vec::new();
        if !is_dns_label(&self.name) {
            problems.push(problem(
                "name",
                format!(
                    "{:?} is not a DNS label (lower-case letters, digits and '-', at most 63)",
                    self.name
                ),
            ));
        }
        if let Some(env) = &self.env {
            if !is_env_name(env) {
                problems.push(problem(
                    "env",
                    format!("{env:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            } else if env.starts_with("BOUNDARY_") {
                problems.push(problem(
                    "env",
                    format!("{env:?}: names starting with BOUNDARY_ are Agent Boundary's own"),
                ));
            }
        }
        let i = &self.inject;
        let set = [
            i.header.is_some(),
            i.basic_auth.is_some(),
            i.aws_sig_v4.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            problems.push(problem(
                "inject",
                format!("set exactly one of header, basicAuth, awsSigV4 ({set} set)"),
            ));
            return Err(problems);
        }
        let needs_secret = i.aws_sig_v4.is_none();
        if needs_secret && self.secret_key_ref.is_none() {
            problems.push(problem(
                "secretKeyRef",
                "required for header and basicAuth: the Secret key holding the value",
            ));
        }
        if !needs_secret && self.secret_key_ref.is_some() {
            problems.push(problem(
                "secretKeyRef",
                "not used by awsSigV4: name the Secret in inject.awsSigV4.secretName",
            ));
        }
        let apply = if let Some(h) = &i.header {
            check_header(h, &mut problems)
        } else if let Some(b) = &i.basic_auth {
            if b.username.contains(':') || b.username.chars().any(char::is_control) {
                problems.push(problem(
                    "inject.basicAuth.username",
                    "must not contain ':' or control characters",
                ));
            }
            Apply::Basic {
                username: &b.username,
            }
        } else {
            let a = i.aws_sig_v4.as_ref().expect("counted above");
            let source = match (&a.secret_name, a.identity) {
                (Some(name), None) if !name.is_empty() => AwsSource::Secret(name),
                (None, Some(AwsIdentity::Sidecar)) => AwsSource::Sidecar,
                _ => {
                    problems.push(problem(
                        "inject.awsSigV4",
                        "set exactly one of secretName and identity: Sidecar",
                    ));
                    AwsSource::Sidecar
                }
            };
            Apply::SigV4 { source }
        };
        if problems.is_empty() {
            Ok(apply)
        } else {
            Err(problems)
        }
    }

    /// The destinations as `spec.http` rules (TLS intercepted), for the rule engine to compile
    /// and match: a request a compiled destination allows is one the credential goes into.
    pub fn destination_rules(&self) -> Vec<crate::policy::HttpRule> {
        self.destinations
            .iter()
            .map(|d| crate::policy::HttpRule {
                domains: d.domains.clone(),
                methods: d.methods.clone(),
                paths: d.paths.clone(),
                ports: d.ports.clone(),
                tls: crate::policy::TlsMode::Intercept,
                ..crate::policy::HttpRule::default()
            })
            .collect()
    }

    /// The environment variables the jailed containers get, with their placeholders.
    pub fn placeholder_env(&self, nonce: &str) -> Vec<(String, String)> {
        if self.inject.aws_sig_v4.is_some() {
            vec![
                (
                    aws_keys::ACCESS_KEY_ID.to_owned(),
                    placeholder(nonce, &self.name),
                ),
                (
                    aws_keys::SECRET_ACCESS_KEY.to_owned(),
                    secret_placeholder(nonce, &self.name),
                ),
            ]
        } else {
            self.env
                .iter()
                .map(|e| (e.clone(), placeholder(nonce, &self.name)))
                .collect()
        }
    }

    /// The Secret keys the real value comes from, as `(secret, Some(key))`, or the whole
    /// Secret as `(secret, None)` (awsSigV4's `secretName`).
    pub fn secret_source(&self) -> Option<(&str, Option<&str>)> {
        if let Some(a) = &self.inject.aws_sig_v4 {
            return a.secret_name.as_deref().map(|s| (s, None));
        }
        self.secret_key_ref
            .as_ref()
            .map(|r| (r.name.as_str(), Some(r.key.as_str())))
    }
}

fn check_header<'a>(h: &'a HeaderInjection, problems: &mut Vec<CredentialProblem>) -> Apply<'a> {
    let format = h.format.as_deref().unwrap_or(DEFAULT_FORMAT);
    if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
        problems.push(problem(
            "inject.header.name",
            format!("{:?} is not an HTTP header name", h.name),
        ));
    }
    if is_reserved_header(&h.name) {
        problems.push(problem(
            "inject.header.name",
            format!("{:?} is set by the proxy itself", h.name),
        ));
    }
    if format.matches(VALUE_MARK).count() != 1 {
        problems.push(problem(
            "inject.header.format",
            format!("{format:?} must contain {VALUE_MARK} exactly once"),
        ));
    } else if http::HeaderValue::from_str(&format.replace(VALUE_MARK, "v")).is_err() {
        problems.push(problem(
            "inject.header.format",
            format!("{format:?} is not a valid header value"),
        ));
    }
    Apply::Header {
        name: &h.name,
        format,
    }
}

/// Headers a credential may not set: the proxy and HTTP itself own them.
fn is_reserved_header(name: &str) -> bool {
    const RESERVED: [&str; 8] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Start of every placeholder: the proxy treats any string with it, anywhere in a request it does
/// not put a credential into, as a leak attempt.
pub const PLACEHOLDER_PREFIX: &str = "boundary-ph-";

/// Length of a placeholder nonce.
pub const NONCE_LEN: usize = 16;

/// The placeholder of credential `name` in the pod of `nonce` (what `env` holds; for awsSigV4 the
/// access key id).
pub fn placeholder(nonce: &str, name: &str) -> String {
    format!("{PLACEHOLDER_PREFIX}{nonce}-{name}")
}

/// The placeholder secret access key of an awsSigV4 credential.
pub fn secret_placeholder(nonce: &str, name: &str) -> String {
    format!("{PLACEHOLDER_PREFIX}{nonce}-{name}-secret")
}

/// A placeholder nonce derived from `seed` (random bytes, or the admission request's UID, which
/// the apiserver makes random per request): [`NONCE_LEN`] characters of `[a-z2-7]`.
pub fn nonce_from(seed: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    Sha256::digest(seed)
        .iter()
        .take(NONCE_LEN)
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect()
}

/// Whether `nonce` has the shape [`nonce_from`] gives.
pub fn is_nonce(nonce: &str) -> bool {
    nonce.len() == NONCE_LEN
        && nonce
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// Shows a placeholder (or any secret-looking string) in audit records and logs: the prefix and
/// the credential's name stay, the nonce does not.
pub fn redact_placeholder(placeholder: &str) -> String {
    match placeholder.strip_prefix(PLACEHOLDER_PREFIX) {
        Some(rest) if rest.len() > NONCE_LEN + 1 => {
            format!("{PLACEHOLDER_PREFIX}…-{}", &rest[NONCE_LEN + 1..])
        }
        _ => format!("{PLACEHOLDER_PREFIX}…"),
    }
}

/// The key of the credentials Secret (and file in the sidecar's credentials directory) that holds
/// the value of credential `credential` of policy `policy`: `<policy>.<credential>` when that is
/// unambiguous (policy names without `.`), else a hash. Secret keys allow `[-._a-zA-Z0-9]`.
pub fn value_key(policy: &str, credential: &str) -> String {
    if policy.contains('.') {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{policy}/{credential}").as_bytes());
        let hex: String = digest.iter().take(10).fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        format!("h-{hex}.{credential}")
    } else {
        format!("{policy}.{credential}")
    }
}

/// What one key of the credentials Secret holds (JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialValue {
    /// The value of a `header` or `basicAuth` credential.
    Value(String),
    /// The keys of an `awsSigV4.secretName` credential.
    Aws(AwsKeys),
}

/// AWS keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsKeys {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

// Debug never shows a value: these types reach error messages and logs.
impl std::fmt::Debug for CredentialValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialValue::Value(v) => write!(f, "Value(<{} bytes redacted>)", v.len()),
            CredentialValue::Aws(k) => k.fmt(f),
        }
    }
}

impl std::fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKeys")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_cred(format: Option<&str>) -> Credential {
        Credential {
            name: "anthropic".into(),
            secret_key_ref: Some(SecretKeyRef {
                name: "anthropic".into(),
                key: "api-key".into(),
            }),
            destinations: vec![CredentialDestination {
                domains: vec!["api.anthropic.com".into()],
                ..Default::default()
            }],
            inject: Injection {
                header: Some(HeaderInjection {
                    name: "x-api-key".into(),
                    format: format.map(Into::into),
                }),
                ..Default::default()
            },
            env: Some("ANTHROPIC_API_KEY".into()),
        }
    }

    #[test]
    fn a_header_credential_applies_with_its_format() {
        let c = header_cred(Some("Bearer {value}"));
        assert_eq!(
            c.apply().unwrap(),
            Apply::Header {
                name: "x-api-key",
                format: "Bearer {value}"
            }
        );
        assert_eq!(
            header_cred(None).apply().unwrap(),
            Apply::Header {
                name: "x-api-key",
                format: "{value}"
            }
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut c = header_cred(Some("Bearer"));
        c.name = "Bad_Name".into();
        c.env = Some("1X".into());
        c.inject.header.as_mut().unwrap().name = "Host".into();
        let fields: Vec<String> = c
            .apply()
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            ["name", "env", "inject.header.name", "inject.header.format"]
        );
        let mut two = header_cred(None);
        two.inject.basic_auth = Some(BasicAuthInjection {
            username: "u".into(),
        });
        assert_eq!(two.apply().unwrap_err()[0].field, "inject");
        let mut sig = header_cred(None);
        sig.inject = Injection {
            aws_sig_v4: Some(AwsSigV4Injection::default()),
            ..Default::default()
        };
        let fields: Vec<String> = sig
            .apply()
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["secretKeyRef", "inject.awsSigV4"]);
    }

    #[test]
    fn placeholders_carry_the_prefix_the_nonce_and_the_name_and_redact_the_nonce() {
        let nonce = nonce_from(b"7c1f0c1e-0000-4000-8000-000000000001");
        assert!(is_nonce(&nonce), "{nonce}");
        assert_ne!(nonce, nonce_from(b"another review"));
        let c = header_cred(None);
        let env = c.placeholder_env(&nonce);
        assert_eq!(env[0].0, "ANTHROPIC_API_KEY");
        assert_eq!(env[0].1, format!("boundary-ph-{nonce}-anthropic"));
        assert_eq!(redact_placeholder(&env[0].1), "boundary-ph-…-anthropic");
        assert!(!redact_placeholder(&env[0].1).contains(&nonce));
        let mut sig = header_cred(None);
        sig.secret_key_ref = None;
        sig.inject = Injection {
            aws_sig_v4: Some(AwsSigV4Injection {
                identity: Some(AwsIdentity::Sidecar),
                ..Default::default()
            }),
            ..Default::default()
        };
        let names: Vec<String> = sig
            .placeholder_env(&nonce)
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
    }

    #[test]
    fn value_keys_are_secret_keys_and_never_collide_on_dots() {
        assert_eq!(value_key("agent", "github"), "agent.github");
        let dotted = value_key("a.b", "c");
        assert!(dotted.starts_with("h-") && dotted.rsplit('.').next() == Some("c"));
        assert_ne!(value_key("a.b", "c"), value_key("a", "b.c"));
        for k in [value_key("agent", "github"), dotted] {
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            );
        }
    }

    #[test]
    fn values_never_show_in_debug_output() {
        let v = CredentialValue::Value("sk-ant-secret".into());
        assert!(!format!("{v:?}").contains("sk-ant"));
        let a = CredentialValue::Aws(AwsKeys {
            access_key_id: "AKIAREAL".into(),
            secret_access_key: "wJalr".into(),
            session_token: Some("tok".into()),
        });
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("AKIAREAL") && !shown.contains("wJalr") && !shown.contains("tok\"")
        );
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"value":"sk-ant-secret"}"#);
    }
}

//! Credentials the agent never holds (`spec.credentials[]`, `boundary run --credential`).
//!
//! Per container the proxy knows a [`CredentialSet`]: each credential's name, its destinations
//! (compiled into a rule set of their own, matched like `spec.http` rules), how it goes into a
//! request, its placeholders (from the pod's nonce) and the key of its value. The values
//! themselves live apart, in [`values::ValueStore`] (the sidecar's credentials directory, hot
//! reloaded; standalone, the supervisor's environment), so a rotated Secret needs no policy
//! reload, and a policy reload swaps the set together with the rules ([`crate::policy::Resolved`]).
//!
//! [`decide`] is the pure decision for one request: put credentials in ([`Outcome::Inject`]),
//! refuse a leak attempt ([`Outcome::Leak`]), refuse a bound request whose value is missing
//! ([`Outcome::NoValue`]), or nothing. A credential is *bound* to a request when the rules allow
//! the request, its destination matches, and the connection is TLS the proxy intercepts (a
//! credential never goes out over plain HTTP). Leak needles: every placeholder (any string
//! starting with [`PLACEHOLDER_PREFIX`], other pods' too) that injection does not replace, and
//! every real value (at least [`MIN_VALUE_LEN`] bytes) of the credentials not bound to the
//! request; checked in header values (and the decoded `Basic` credentials), the path and the
//! query (raw and percent-decoded). The body is scanned as it streams ([`scan`]).
//!
//! A container without credentials is not checked at all (no placeholders exist for it).
//!
//! Known limits, stated plainly: a value or placeholder the agent transforms (encodes other than
//! percent or `Basic` base64, splits, reverses) is not recognised, and plain TCP, TLS
//! passthrough and the frames of an upgraded connection (WebSocket) are not inspected. Leak
//! detection is a tripwire for the plain case; the protection is that the agent never holds a
//! real value. Responses are not scanned (holding back bytes would stall server-sent events):
//! a bound destination that echoes request headers back would show the value to the agent, so
//! bind credentials only to the APIs they are for. The body of a request a credential is put
//! into is checked for the other credentials' values only: a model API may legitimately be sent
//! a conversation quoting the agent's environment, placeholders included.

pub mod scan;
pub mod values;

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine as _;
use boundary_api::Mode;
use boundary_api::credentials::{
    self as api, Apply, Credential as Spec, CredentialValue, PLACEHOLDER_PREFIX, VALUE_MARK,
};
use boundary_api::rules::{self, Host, HttpRequest, RequestPath, RuleSet, RuleSource};
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION};
use serde::Serialize;

/// Real values shorter than this are not searched for (too many false positives); they are
/// still never written to the audit trail by the proxy.
pub const MIN_VALUE_LEN: usize = 8;

/// How a credential goes into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Set this header to `format` with the value at `{value}`.
    Header {
        /// The header.
        name: HeaderName,
        /// E.g. `Bearer {value}`.
        format: String,
    },
    /// `Authorization: Basic base64(username:value)`.
    Basic {
        /// The user name.
        username: String,
    },
    /// AWS `SigV4` re-signing (the hook in `http.rs`).
    SigV4,
}

/// One credential as the proxy uses it.
#[derive(Debug)]
pub struct Credential {
    /// Its name (audit records, metrics, the placeholder).
    pub name: String,
    /// How it goes in.
    pub method: Method,
    /// Its destinations; `None` when they did not compile (then it is never bound).
    destinations: Option<RuleSet>,
    /// Its placeholders (the value's; for `SigV4` also the secret key's), longest first; empty
    /// without a nonce.
    pub placeholders: Vec<String>,
    /// The key of its value in the [`values::ValueStore`].
    pub value_key: String,
    /// Where the value should come from, for the message when it is missing.
    pub source: String,
}

/// The credentials of one container.
#[derive(Debug, Default)]
pub struct CredentialSet {
    /// The credentials, in policy order.
    pub credentials: Vec<Credential>,
}

/// Real values by [`values::ValueStore`] key.
pub type Values = HashMap<String, CredentialValue>;

impl CredentialSet {
    /// The credentials of the policies `specs` (policy name, its credentials; `None` for the
    /// command line, whose value keys are the credential names), with the placeholders of
    /// `nonce`. A credential that does not validate or compile is logged and left out (the
    /// operator publishes only valid ones); its placeholder is still caught by the prefix.
    pub fn new<'a>(
        specs: impl IntoIterator<Item = (Option<&'a str>, &'a [Spec])>,
        nonce: Option<&str>,
    ) -> CredentialSet {
        let mut credentials = Vec::new();
        for (policy, specs) in specs {
            for spec in specs {
                match Credential::new(policy, spec, nonce) {
                    Ok(c) => credentials.push(c),
                    Err(problem) => tracing::error!(
                        policy = policy.unwrap_or("--credential"),
                        credential = %spec.name,
                        %problem,
                        "credential left out: it is never put into requests"
                    ),
                }
            }
        }
        CredentialSet { credentials }
    }

    /// Whether there are no credentials (then nothing is checked at all).
    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty()
    }

    /// The credential names.
    pub fn names(&self) -> Vec<&str> {
        self.credentials.iter().map(|c| c.name.as_str()).collect()
    }

    /// Which credential a placeholder belongs to.
    fn owner_of(&self, token: &[u8]) -> Option<&str> {
        self.credentials
            .iter()
            .find(|c| c.placeholders.iter().any(|p| p.as_bytes() == token))
            .map(|c| c.name.as_str())
    }

    /// `text` with every placeholder shown redacted and every real value replaced by
    /// `<redacted>`, for audit lines.
    pub fn redact<'t>(&self, text: &'t str, values: &Values) -> Cow<'t, str> {
        if self.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = redact_placeholders(text);
        for c in &self.credentials {
            for secret in secrets_of(values.get(&c.value_key)) {
                if out.contains(secret) {
                    out = Cow::Owned(out.replace(secret, "<redacted>"));
                }
            }
        }
        out
    }
}

impl Credential {
    fn new(policy: Option<&str>, spec: &Spec, nonce: Option<&str>) -> Result<Credential, String> {
        let method = match spec.apply() {
            Ok(Apply::Header { name, format }) => Method::Header {
                name: HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
                format: format.to_owned(),
            },
            Ok(Apply::Basic { username }) => Method::Basic {
                username: username.to_owned(),
            },
            Ok(Apply::SigV4 { .. }) => Method::SigV4,
            Err(problems) => {
                return Err(problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "));
            }
        };
        let http = spec.destination_rules();
        let destinations = rules::compile(RuleSource {
            policy,
            field_prefix: "spec.credentials.destinations.",
            http: &http,
            ..RuleSource::default()
        })
        .map(|r| RuleSet::new(r, Mode::Enforce))
        .map_err(|e| e.to_string())?;
        let mut placeholders = Vec::new();
        if let Some(nonce) = nonce {
            if method == Method::SigV4 {
                placeholders.push(api::secret_placeholder(nonce, &spec.name));
            }
            placeholders.push(api::placeholder(nonce, &spec.name));
        }
        let source = match spec.secret_source() {
            Some((secret, Some(key))) => format!("Secret {secret:?} key {key:?}"),
            Some((secret, None)) => format!("Secret {secret:?}"),
            None if policy.is_none() => "the supervisor's environment".to_owned(),
            None => "the sidecar's AWS identity".to_owned(),
        };
        Ok(Credential {
            name: spec.name.clone(),
            method,
            destinations: Some(destinations),
            placeholders,
            value_key: policy.map_or_else(|| spec.name.clone(), |p| api::value_key(p, &spec.name)),
            source,
        })
    }

    /// Whether the request goes to one of its destinations.
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        self.destinations.as_ref().is_some_and(|rules| {
            rules
                .check_http(HttpRequest {
                    host: req.host,
                    port: req.port,
                    method: req.method,
                    path: req.path,
                    headers: &[],
                    query: None,
                })
                .is_allow()
        })
    }
}

/// The secrets of a value that are searched for and redacted (long enough to be unambiguous).
fn secrets_of(value: Option<&CredentialValue>) -> Vec<&str> {
    let all: Vec<&str> = match value {
        Some(CredentialValue::Value(v)) => vec![v.as_str()],
        Some(CredentialValue::Aws(k)) => {
            let mut v = vec![k.access_key_id.as_str(), k.secret_access_key.as_str()];
            v.extend(k.session_token.as_deref());
            v
        }
        None => Vec::new(),
    };
    all.into_iter()
        .filter(|s| s.len() >= MIN_VALUE_LEN)
        .collect()
}

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Destination host.
    pub host: &'a Host,
    /// Destination port.
    pub port: u16,
    /// Method.
    pub method: &'a str,
    /// Normalised path, for destinations.
    pub path: &'a RequestPath,
    /// Path and query as sent.
    pub path_and_query: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The connection is TLS the proxy intercepts.
    pub intercepted: bool,
    /// The rules allow the request (not `would-deny`).
    pub allowed: bool,
}

/// A leak attempt: what and where (as in the audit record's `leak`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    /// The credential, or `unknown placeholder`.
    pub credential: String,
    /// `header NAME`, `query`, `path` or `body`.
    #[serde(rename = "where")]
    pub place: String,
    /// It was a placeholder sent over plain HTTP to one of its credential's destinations.
    #[serde(skip)]
    pub plain_http: bool,
}

impl Leak {
    /// The denial's reason for the audit record and the 403.
    pub fn reason(&self, host: &str, port: u16) -> String {
        let what = if self.credential == UNKNOWN_PLACEHOLDER {
            "an unknown placeholder".to_owned()
        } else {
            format!("placeholder or value of {}", self.credential)
        };
        let mut reason = format!(
            "credential leak attempt: {what} in {} to {host}:{port}",
            self.place
        );
        if self.plain_http {
            reason.push_str(
                " over plain http (credentials are put in only over HTTPS the proxy intercepts: \
                 use https://)",
            );
        }
        reason
    }

    /// The label of `boundary_credential_leaks_total{where}` (no header name: bounded).
    pub fn metric_place(&self) -> &'static str {
        match self.place.split(' ').next() {
            Some("header") => "header",
            Some("query") => "query",
            Some("path") => "path",
            _ => "body",
        }
    }
}

/// Names a placeholder of no credential of this container.
pub const UNKNOWN_PLACEHOLDER: &str = "unknown placeholder";

/// What to do with one request.
#[derive(Debug)]
pub enum Outcome<'s> {
    /// No credential is involved.
    Nothing,
    /// Put these credentials in.
    Inject(Vec<Injection<'s>>),
    /// Refuse: a placeholder or value is going where it is not bound.
    Leak(Leak),
    /// Refuse: a credential is bound but has no value (fail closed).
    NoValue {
        /// The credential.
        credential: &'s str,
        /// The reason, for the audit record and the 403.
        message: String,
    },
}

/// One credential to put into a request, with its value.
#[derive(Debug, Clone, Copy)]
pub struct Injection<'s> {
    /// The credential.
    pub credential: &'s Credential,
    /// Its value.
    pub value: &'s CredentialValue,
}

/// The decision for one request (pure).
pub fn decide<'s>(
    set: &'s CredentialSet,
    values: &'s Values,
    req: &RequestFacts<'_>,
) -> Outcome<'s> {
    if set.is_empty() {
        return Outcome::Nothing;
    }
    let matching: Vec<&Credential> = set.credentials.iter().filter(|c| c.matches(req)).collect();
    let bound: Vec<&Credential> = if req.allowed && req.intercepted {
        matching.clone()
    } else {
        Vec::new()
    };
    let replaced: Vec<&[u8]> = bound
        .iter()
        .flat_map(|c| c.placeholders.iter().map(String::as_bytes))
        .collect();
    let foreign: Vec<(&str, &str)> = set
        .credentials
        .iter()
        .filter(|c| !bound.iter().any(|b| std::ptr::eq(*b, *c)))
        .flat_map(|c| {
            secrets_of(values.get(&c.value_key))
                .into_iter()
                .map(move |s| (c.name.as_str(), s))
        })
        .collect();
    let finder = Finder {
        set,
        replaced: &replaced,
        foreign: &foreign,
    };
    if let Some(mut leak) = finder.in_request(req) {
        leak.plain_http = !req.intercepted
            && matching.iter().any(|c| c.name == leak.credential)
            && leak.credential != UNKNOWN_PLACEHOLDER;
        return Outcome::Leak(leak);
    }
    let mut injections = Vec::new();
    for c in bound {
        match values.get(&c.value_key) {
            Some(value) => injections.push(Injection {
                credential: c,
                value,
            }),
            None if c.method == Method::SigV4 && c.source.contains("AWS identity") => {
                // The sidecar's own identity: the keys come from the signer, not the store.
                injections.push(Injection {
                    credential: c,
                    value: &NO_VALUE,
                });
            }
            None => {
                return Outcome::NoValue {
                    credential: &c.name,
                    message: format!(
                        "credential {} has no value: {} did not reach the proxy (see the \
                         policy's status)",
                        c.name, c.source
                    ),
                };
            }
        }
    }
    if injections.is_empty() {
        Outcome::Nothing
    } else {
        Outcome::Inject(injections)
    }
}

/// The value of a `SigV4` credential signed with the sidecar's own identity.
static NO_VALUE: CredentialValue = CredentialValue::Value(String::new());

/// Finds leak needles in a request's head.
struct Finder<'a> {
    set: &'a CredentialSet,
    /// Placeholders injection replaces (of the bound credentials).
    replaced: &'a [&'a [u8]],
    /// Real values of the credentials not bound: (credential, value).
    foreign: &'a [(&'a str, &'a str)],
}

impl Finder<'_> {
    fn in_request(&self, req: &RequestFacts<'_>) -> Option<Leak> {
        let leak = |credential: String, place: String| Leak {
            credential,
            place,
            plain_http: false,
        };
        // The request's host (`:authority` in HTTP/2 is not among the headers).
        if let Some(who) = self.in_text(req.host.to_string().as_bytes()) {
            return Some(leak(who, "header host".to_owned()));
        }
        for (name, value) in req.headers {
            let bytes = value.as_bytes();
            let decoded = basic_credentials(name, bytes);
            for text in std::iter::once(bytes).chain(decoded.as_deref()) {
                if let Some(who) = self.in_text(text) {
                    return Some(leak(who, format!("header {name}")));
                }
            }
        }
        let (path, query) = req
            .path_and_query
            .split_once('?')
            .unwrap_or((req.path_and_query, ""));
        for (text, place) in [(path, "path"), (query, "query")] {
            let decoded = percent_decode(text.as_bytes());
            for t in [text.as_bytes(), &decoded] {
                if let Some(who) = self.in_text(t) {
                    return Some(leak(who, place.to_owned()));
                }
            }
        }
        None
    }

    /// The credential whose needle `text` carries.
    fn in_text(&self, text: &[u8]) -> Option<String> {
        for (start, end) in placeholder_tokens(text) {
            let token = &text[start..end];
            if !self.replaced.contains(&token) {
                return Some(
                    self.set
                        .owner_of(token)
                        .unwrap_or(UNKNOWN_PLACEHOLDER)
                        .to_owned(),
                );
            }
        }
        self.foreign
            .iter()
            .find(|(_, secret)| memchr::memmem::find(text, secret.as_bytes()).is_some())
            .map(|(name, _)| (*name).to_owned())
    }
}

/// The decoded `user:password` of a `Basic` authorization header (where a client such as curl
/// `-u` or git puts a token, base64-encoded).
fn basic_credentials(name: &HeaderName, value: &[u8]) -> Option<Vec<u8>> {
    if name != AUTHORIZATION && name != PROXY_AUTHORIZATION {
        return None;
    }
    let rest = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"basic "))
        .map(|_| &value[6..])?;
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()
}

/// `text` with every placeholder shown redacted (its nonce hidden).
pub fn redact_placeholders(text: &str) -> Cow<'_, str> {
    // Already redacted ones (`boundary-ph-…-name`) stay as they are.
    let tokens: Vec<(usize, usize)> = placeholder_tokens(text.as_bytes())
        .into_iter()
        .filter(|&(start, end)| {
            !(end == start + PLACEHOLDER_PREFIX.len() && text[end..].starts_with('…'))
        })
        .collect();
    if tokens.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in tokens {
        out.push_str(&text[last..start]);
        out.push_str(&api::redact_placeholder(&text[start..end]));
        last = end;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// Where placeholder-looking tokens are in `text`: the prefix and the `[a-z0-9-]` that follow
/// (trailing `-` excluded), as byte ranges.
pub fn placeholder_tokens(text: &[u8]) -> Vec<(usize, usize)> {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = memchr::memmem::find(&text[from..], prefix) {
        let start = from + found;
        let mut end = start + prefix.len();
        while end < text.len()
            && (text[end].is_ascii_lowercase() || text[end].is_ascii_digit() || text[end] == b'-')
        {
            end += 1;
        }
        while end > start + prefix.len() && text[end - 1] == b'-' {
            end -= 1;
        }
        out.push((start, end));
        from = end.max(start + 1);
    }
    out
}

/// `%XX` decoded (invalid escapes kept as they are).
fn percent_decode(text: &[u8]) -> Cow<'_, [u8]> {
    if !text.contains(&b'%') {
        return Cow::Borrowed(text);
    }
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%'
            && let (Some(h), Some(l)) = (
                text.get(i + 1).copied().and_then(hex),
                text.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// Percent-encodes all but RFC 3986's unreserved characters (a value put into a URL).
fn percent_encode(value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Why credentials could not be put into a request (never showing a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The value does not fit the credential (AWS keys for a header, or the reverse).
    #[error(
        "credential {0}: its value has the wrong shape ({{\"value\": ...}} for header and \
         basicAuth, {{\"aws\": ...}} for awsSigV4)"
    )]
    WrongShape(String),
    /// The value cannot be in an HTTP header (control characters, line breaks).
    #[error("credential {0}: its value is not a valid HTTP header value")]
    BadValue(String),
}

/// Puts header and basic credentials into a request head: each bound placeholder in a header
/// value or the URL is replaced by the value (percent-encoded in the URL), then the header is
/// set (replacing the client's). `SigV4` credentials are left to the signer; the ones found are
/// returned.
pub fn inject<'s>(
    headers: &mut HeaderMap,
    path_and_query: &mut String,
    injections: &[Injection<'s>],
) -> Result<Vec<Injection<'s>>, InjectError> {
    let mut sigv4 = Vec::new();
    for injection in injections {
        let c = injection.credential;
        if c.method == Method::SigV4 {
            sigv4.push(*injection);
            continue;
        }
        let CredentialValue::Value(value) = injection.value else {
            return Err(InjectError::WrongShape(c.name.clone()));
        };
        let bad = || InjectError::BadValue(c.name.clone());
        for placeholder in &c.placeholders {
            for v in headers.values_mut() {
                let replaced =
                    replace_token(v.as_bytes(), placeholder.as_bytes(), value.as_bytes());
                if let Cow::Owned(new) = replaced {
                    *v = HeaderValue::from_bytes(&new).map_err(|_| bad())?;
                }
            }
            let encoded = percent_encode(value);
            if let Cow::Owned(new) = replace_token(
                path_and_query.as_bytes(),
                placeholder.as_bytes(),
                encoded.as_bytes(),
            ) {
                *path_and_query = String::from_utf8(new).map_err(|_| bad())?;
            }
        }
        let (name, header) = match &c.method {
            Method::Header { name, format } => (name.clone(), format.replace(VALUE_MARK, value)),
            Method::Basic { username } => (
                AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{value}"))
                ),
            ),
            Method::SigV4 => unreachable!("handled above"),
        };
        let mut header = HeaderValue::from_str(&header).map_err(|_| bad())?;
        header.set_sensitive(true);
        headers.insert(name, header);
    }
    Ok(sigv4)
}

/// `text` with every placeholder token equal to `token` replaced by `with`.
fn replace_token<'t>(text: &'t [u8], token: &[u8], with: &[u8]) -> Cow<'t, [u8]> {
    let mut out = Vec::new();
    let mut last = 0;
    for (start, end) in placeholder_tokens(text) {
        if &text[start..end] == token {
            out.extend_from_slice(&text[last..start]);
            out.extend_from_slice(with);
            last = end;
        }
    }
    if last == 0 {
        return Cow::Borrowed(text);
    }
    out.extend_from_slice(&text[last..]);
    Cow::Owned(out)
}

/// The needles of a request's body: when no credential is bound, every placeholder and every
/// real value; when some are, the real values of the others only (the bound destination may be
/// sent back what the agent saw, e.g. a model API receiving a conversation that quotes the
/// environment; a placeholder alone is worthless). `None`: nothing to scan.
pub fn body_needles(set: &CredentialSet, values: &Values, bound: &[&str]) -> Option<scan::Needles> {
    if set.is_empty() {
        return None;
    }
    let mut needles = Vec::new();
    if bound.is_empty() {
        needles.push((
            UNKNOWN_PLACEHOLDER.to_owned(),
            PLACEHOLDER_PREFIX.as_bytes().to_vec(),
        ));
    }
    for c in &set.credentials {
        if bound.contains(&c.name.as_str()) {
            continue;
        }
        for secret in secrets_of(values.get(&c.value_key)) {
            needles.push((c.name.clone(), secret.as_bytes().to_vec()));
        }
    }
    let placeholders = set
        .credentials
        .iter()
        .flat_map(|c| c.placeholders.iter().map(|p| (p.clone(), c.name.clone())))
        .collect();
    scan::Needles::new(needles, placeholders)
}

#[cfg(test)]
mod tests;

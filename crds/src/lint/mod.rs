//! The policy lint: allow rules that open a channel out of the jail get a warning (never a
//! rejection; the rules stay in force). Pure and kube-free: the operator runs it on a
//! `BoundaryPolicy` or `ClusterBoundaryPolicy` spec ([`lint_entry`]), `boundary check --lint`
//! on the rules of files and flags, `boundary suggest` on the rules it writes.
//!
//! Codes ([`Code`]), one warning per domain pattern of an allow rule, the first that applies:
//!
//! * `any-host`: `domain=*`, a rule with no `domain=`, `0.0.0.0/0`;
//! * `wildcard-tld`: a `*` label right under a public suffix (`*.com`, `*.co.uk`, `api.*.io`):
//!   every site registered there;
//! * `publish-anywhere`: the pattern reaches a host where anyone can publish (paste sites,
//!   request bins, tunnels, public object stores, gists, chat webhooks); the list is data,
//!   `destinations.yaml` beside this file, versioned ([`data_version`]);
//! * `broad-write`: a write method (anything but GET, HEAD, OPTIONS; or any method) with no
//!   path restriction to a wildcard (`*.example.com`), or uninspected TCP/TLS to one.
//!
//! An allow rule whose domain a deny rule among the same rules fully covers (no method, path or
//! condition; its ports at least the rule's) gets no warning: nothing goes out there.
//!
//! A warning is silenced by its code: the annotation
//! [`crate::contract::annotations::LINT_IGNORE`] on a policy, `--lint-ignore` on the command
//! line ([`parse_ignore`]).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::compiled::PolicyEntry;
use crate::rules::{DomainPattern, Host, PathPattern, RequestPath, Rule, RuleKind};

/// The lint's data: destinations where anyone can publish, and the public suffixes.
pub const DATA: &str = include_str!("destinations.yaml");

/// What a warning is about; the stable names are the kebab-case ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// Every host.
    AnyHost,
    /// A wildcard right under a public suffix.
    WildcardTld,
    /// A host where anyone can publish.
    PublishAnywhere,
    /// Writes with no path restriction to a wildcard.
    BroadWrite,
}

impl Code {
    /// Every code, in order of precedence.
    pub const ALL: [Code; 4] = [
        Code::AnyHost,
        Code::WildcardTld,
        Code::PublishAnywhere,
        Code::BroadWrite,
    ];

    /// The stable name (`publish-anywhere`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::AnyHost => "any-host",
            Code::WildcardTld => "wildcard-tld",
            Code::PublishAnywhere => "publish-anywhere",
            Code::BroadWrite => "broad-write",
        }
    }

    /// The code called `name`.
    pub fn parse(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == name.trim())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One warning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// What it is about.
    pub code: Code,
    /// The policy's name (`None`: flags and config files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The policy is a `ClusterBoundaryPolicy`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// The rule's place, as `ruleProblems` name it: `spec.allow[2]`,
    /// `spec.http[0].domains[1]`, `spec.tcp[0].domain`, `spec.presets[0] (github)`,
    /// `--allow[0]`.
    pub field: String,
    /// The rule as written (or summarised, for structured rules).
    pub rule: String,
    /// The domain pattern warned about.
    pub pattern: String,
    /// For `publish-anywhere`: the destination's category (`paste-site`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Why, and what to do instead (one line).
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Some(p) if self.cluster => write!(f, "ClusterBoundaryPolicy {p}: ")?,
            Some(p) => write!(f, "{p}: ")?,
            None => {}
        }
        write!(f, "{}", self.field)?;
        // A preset's place names the preset only: the rule says which of its rules.
        if self.field.ends_with(')') {
            write!(f, ": {}", self.rule)?;
        }
        write!(f, ": {} {}: {}", self.code, self.pattern, self.message)
    }
}

/// One destination of the data.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// A host name; covers it and every subdomain. A `*` label is exactly one label.
    pub domain: String,
    /// `paste-site`, `request-bin`, `tunnel`, `object-store`, `code-host-upload`,
    /// `chat-webhook`.
    pub category: String,
    /// Why anyone can publish there, one line.
    pub why: String,
    /// Only write methods open the channel.
    #[serde(default)]
    pub writes: bool,
    /// Only these paths open the channel (empty: every path).
    #[serde(default)]
    pub paths: Vec<String>,
}

/// The parsed data file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// Goes up whenever an entry changes.
    pub version: u32,
    /// Suffixes under which anyone registers names.
    pub public_suffixes: BTreeSet<String>,
    /// Where anyone can publish.
    pub destinations: Vec<Destination>,
}

/// The data, parsed once. A unit test proves the file parses and every entry is valid.
pub fn data() -> &'static Data {
    static DATA_PARSED: OnceLock<Data> = OnceLock::new();
    DATA_PARSED.get_or_init(|| {
        serde_yaml_ng::from_str(DATA).unwrap_or_else(|e| {
            // Compiled into the binary and checked by a test: this cannot happen in a build
            // that passed its tests; an empty list keeps a broken build from crashing.
            debug_assert!(false, "lint data: {e}");
            Data {
                version: 0,
                public_suffixes: BTreeSet::new(),
                destinations: Vec::new(),
            }
        })
    })
}

/// The version of the lint's data.
pub fn data_version() -> u32 {
    data().version
}

/// Whether `name` (lower case, no trailing dot) is in the lint's public suffixes.
pub fn is_public_suffix(name: &str) -> bool {
    data().public_suffixes.contains(name)
}

/// The destination where anyone can publish that `host` is (or is under), if any. For the
/// advisor, which flags such hosts and never folds them into a wildcard.
pub fn risky_host(host: &str) -> Option<&'static Destination> {
    let labels: Vec<Option<&str>> = host.split('.').map(Some).collect();
    data()
        .destinations
        .iter()
        .find(|d| reaches(&labels, &entry_labels(&d.domain)))
}

/// Codes of a comma-separated list (`publish-anywhere, broad-write`); unknown words are
/// returned apart, for an error or a note.
pub fn parse_ignore(text: &str) -> (Vec<Code>, Vec<String>) {
    let mut codes = Vec::new();
    let mut unknown = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match Code::parse(word) {
            Some(c) if !codes.contains(&c) => codes.push(c),
            Some(_) => {}
            None => unknown.push(word.to_owned()),
        }
    }
    (codes, unknown)
}

/// The warnings of a policy's rules; a policy whose rules do not compile has none (its allow
/// rules are not enforced: the operator publishes it without them).
pub fn lint_entry(entry: &PolicyEntry, ignore: &[Code]) -> Vec<Warning> {
    entry
        .compile()
        .map(|rules| lint(&rules, ignore))
        .unwrap_or_default()
}

/// The warnings of compiled rules (allow and deny rules of one policy, or of everything a
/// command line enforces), in rule order; codes in `ignore` are left out.
pub fn lint(rules: &[Rule], ignore: &[Code]) -> Vec<Warning> {
    let denies: Vec<&Rule> = rules.iter().filter(|r| r.is_deny()).collect();
    let mut out = Vec::new();
    for rule in rules {
        if rule.is_deny() || rule.kind == RuleKind::PodLocal {
            continue;
        }
        let patterns: Vec<(Option<usize>, DomainPattern)> = match &rule.domains {
            None => vec![(None, DomainPattern::AnyName)],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, d)| (Some(j), d.clone()))
                .collect(),
        };
        for (j, pattern) in patterns {
            let Some((code, category, message)) = classify(&pattern, rule) else {
                continue;
            };
            if ignore.contains(&code) || covered_by_deny(&denies, &pattern, rule) {
                continue;
            }
            out.push(Warning {
                code,
                policy: rule.origin().policy.clone(),
                cluster: rule.origin().cluster,
                field: position(rule, j),
                rule: rule.origin().text.clone(),
                pattern: pattern.to_string(),
                category,
                message,
            });
        }
    }
    out
}

/// The place of domain `j` of `rule`, as `ruleProblems` name it.
fn position(rule: &Rule, j: Option<usize>) -> String {
    let field = &rule.origin().field;
    if field.ends_with(')') {
        return field.clone();
    }
    match (&rule.kind, j) {
        (RuleKind::Tcp, _) => format!("{field}.domain"),
        // A structured rule (its summary starts with `domains=`): the list item.
        (_, Some(j)) if rule.origin().text.starts_with("domains=") => {
            format!("{field}.domains[{j}]")
        }
        _ => field.clone(),
    }
}

/// Methods that only read.
const READ_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// Whether `rule` lets something be written: a write method, any method, or an uninspected
/// connection.
fn allows_write(rule: &Rule) -> bool {
    match &rule.kind {
        RuleKind::Http { methods, .. } => methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|m| !READ_METHODS.contains(&m.as_str()))),
        RuleKind::TlsPassthrough | RuleKind::Tcp => true,
        RuleKind::PodLocal | RuleKind::Deny { .. } => false,
    }
}

/// The rule's path patterns (`None`: every path, or the proxy does not see paths).
fn rule_paths(rule: &Rule) -> Option<&[PathPattern]> {
    match &rule.kind {
        RuleKind::Http { paths, .. } => paths.as_deref(),
        _ => None,
    }
}

/// Whether `rule` lets requests through to `path` (a pattern of the data, `*` segments read
/// as some segment).
fn allows_path(rule: &Rule, pattern: &str) -> bool {
    let sample = pattern.replace('*', "x");
    let Ok(path) = RequestPath::parse(&sample) else {
        return true;
    };
    rule_paths(rule).is_none_or(|ps| ps.iter().any(|p| p.matches(&path)))
}

/// Whether the rule's paths are no restriction: some pattern lets through a path no policy
/// would name.
fn paths_unrestricted(rule: &Rule) -> bool {
    allows_path(rule, "/lint-probe-unlisted/x/y")
}

fn classify(pattern: &DomainPattern, rule: &Rule) -> Option<(Code, Option<String>, String)> {
    let write = allows_write(rule);
    let wildcard = match pattern {
        DomainPattern::AnyName => {
            return Some((
                Code::AnyHost,
                None,
                "allows every host: name the hosts the agent needs (`boundary suggest` lists \
                 them from an audit)"
                    .into(),
            ));
        }
        DomainPattern::Ip(_) => {
            let text = pattern.to_string();
            if text.ends_with("/0") {
                return Some((
                    Code::AnyHost,
                    None,
                    "allows every address: name the hosts or networks the agent needs".into(),
                ));
            }
            return None;
        }
        DomainPattern::Glob(glob) => {
            let suffix = glob
                .rsplit('*')
                .next()
                .unwrap_or("")
                .trim_start_matches('.');
            if glob.contains('*') && (suffix.is_empty() || is_public_suffix(suffix)) {
                return Some(wildcard_tld(suffix));
            }
            if let Some(d) = data().destinations.iter().find(|d| {
                let sample = d.domain.replace('*', "x");
                let hit = [sample.clone(), format!("x.{sample}")]
                    .iter()
                    .any(|h| Host::parse(h).is_ok_and(|h| pattern.matches(&h)));
                hit && destination_applies(d, rule, write)
            }) {
                return Some(publish(d, pattern));
            }
            glob.contains('*')
        }
        DomainPattern::Labels(_) => {
            let labels = pattern.labels().unwrap_or_default();
            for (i, label) in labels.iter().enumerate() {
                if label.is_some() {
                    continue;
                }
                let rest: Option<Vec<&str>> = labels[i + 1..].iter().copied().collect();
                if let Some(rest) = rest {
                    let suffix = rest.join(".");
                    if is_public_suffix(&suffix) {
                        return Some(wildcard_tld(&suffix));
                    }
                }
            }
            if let Some(d) = data().destinations.iter().find(|d| {
                reaches(&labels, &entry_labels(&d.domain)) && destination_applies(d, rule, write)
            }) {
                return Some(publish(d, pattern));
            }
            labels.iter().any(Option::is_none)
        }
    };
    if wildcard && write && paths_unrestricted(rule) {
        let what = match rule.kind {
            RuleKind::Http { .. } => {
                "allows writes (POST, PUT, PATCH, DELETE or any method) to every path of every \
                 host it matches: a wildcard takes in hosts nobody reviewed; allow only GET and \
                 HEAD there, restrict the paths, or name the hosts that take writes"
            }
            _ => {
                "relays uninspected connections to every host it matches: a wildcard takes in \
                 hosts nobody reviewed; name the hosts"
            }
        };
        return Some((Code::BroadWrite, None, what.into()));
    }
    None
}

fn wildcard_tld(suffix: &str) -> (Code, Option<String>, String) {
    let under = if suffix.is_empty() {
        "every name".to_owned()
    } else {
        format!("every site registered under the public suffix {suffix:?}")
    };
    (
        Code::WildcardTld,
        None,
        format!("reaches {under}: name the registered domains the agent needs (`*.example.com`)"),
    )
}

fn publish(d: &Destination, pattern: &DomainPattern) -> (Code, Option<String>, String) {
    let exact = pattern.exact_name().is_some();
    let fix = if exact {
        "remove the rule unless the agent must publish there, and then restrict it to your own \
         paths or buckets"
    } else {
        "name the hosts the agent needs instead of a wildcard that takes this one in"
    };
    (
        Code::PublishAnywhere,
        Some(d.category.clone()),
        format!("{} ({}, {}): {fix}", d.why, d.category, d.domain),
    )
}

/// Whether the destination's channel is open under `rule`: its write-only and path limits.
fn destination_applies(d: &Destination, rule: &Rule, write: bool) -> bool {
    (!d.writes || write) && (d.paths.is_empty() || d.paths.iter().any(|p| allows_path(rule, p)))
}

fn entry_labels(domain: &str) -> Vec<Option<&str>> {
    domain
        .split('.')
        .map(|l| if l == "*" { None } else { Some(l) })
        .collect()
}

/// Whether some host matched by `pattern` (labels left to right; a leading `None` is one or
/// more labels, any other exactly one) is `entry` or under it (`None` labels: one label each).
fn reaches(pattern: &[Option<&str>], entry: &[Option<&str>]) -> bool {
    let compatible = |a: Option<&str>, b: Option<&str>| a.is_none() || b.is_none() || a == b;
    let leading = pattern.len() > 1 && pattern[0].is_none();
    let fixed = if leading { &pattern[1..] } else { pattern };
    if !leading && fixed.len() < entry.len() {
        return false;
    }
    fixed
        .iter()
        .rev()
        .zip(entry.iter().rev())
        .all(|(a, b)| compatible(*a, *b))
}

/// Whether a deny rule among `denies` refuses everything `rule` allows under `pattern`.
fn covered_by_deny(denies: &[&Rule], pattern: &DomainPattern, rule: &Rule) -> bool {
    denies.iter().any(|d| {
        let whole = matches!(
            &d.kind,
            RuleKind::Deny { methods: None, paths: None, conditions } if conditions.is_empty()
        );
        let ports = match (&d.ports, &rule.ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(deny), Some(allow)) => allow.iter().all(|p| deny.contains(p)),
        };
        whole
            && ports
            && d.domains
                .as_ref()
                .is_none_or(|ds| ds.iter().any(|dp| pattern_covers(dp, pattern)))
    })
}

/// Whether every host `pattern` matches is matched by `deny`.
fn pattern_covers(deny: &DomainPattern, pattern: &DomainPattern) -> bool {
    if *deny == DomainPattern::AnyName || deny == pattern {
        return true;
    }
    if let Some(name) = pattern.exact_name() {
        return Host::parse(&name).is_ok_and(|h| deny.matches(&h));
    }
    let (Some(d), Some(p)) = (deny.labels(), pattern.labels()) else {
        return false;
    };
    let covers = |a: Option<&str>, b: Option<&str>| a.is_none() || a == b;
    let d_leading = d.len() > 1 && d[0].is_none();
    let p_leading = p.len() > 1 && p[0].is_none();
    if d_leading {
        let d_fixed = &d[1..];
        let p_fixed = if p_leading { &p[1..] } else { &p[..] };
        let long_enough = if p_leading {
            p_fixed.len() >= d_fixed.len()
        } else {
            p_fixed.len() > d_fixed.len()
        };
        long_enough
            && d_fixed
                .iter()
                .rev()
                .zip(p_fixed.iter().rev())
                .all(|(a, b)| covers(*a, *b))
    } else {
        !p_leading && d.len() == p.len() && d.iter().zip(&p).all(|(a, b)| covers(*a, *b))
    }
}

#[cfg(test)]
mod tests;

//! The policy advisor behind `boundary suggest`: what the agent did (audit records, a policy's
//! denied destinations) into a minimal `BoundaryPolicy` that allows it. Pure and deterministic:
//! the same observations in any order give the same bytes.
//!
//! How the YAML is made:
//!
//! * only what was denied or would have been ([`Options::all`] false), or everything seen;
//!   requests a deny rule refused are never suggested (a comment says so), nor are those the
//!   private-address guard refused (a comment shows the `spec.resolve` pin that would let them
//!   through, whose address the user must give);
//! * a preset is used when every observed request to its hosts is inside it; those hosts are
//!   then not repeated;
//! * hosts with more than [`Options::collapse`] sibling subdomains become `*.parent`, unless the
//!   parent is a public suffix or the host is one where anyone can publish
//!   ([`crate::lint::risky_host`]): those stay named;
//! * per host, paths are collapsed bottom-up: a prefix with more than `collapse` distinct
//!   paths under it becomes `/prefix/*` (more than that at the top: any path); paths that
//!   share the same methods make one `spec.http` rule; ports are listed unless all are 80 or
//!   443; TCP connections make `spec.tcp` rules, TLS passthrough `tls: Passthrough` rules;
//! * each rule has a comment with its counts and first and last times, and the lint's
//!   warnings on the suggested rules are comments above them (`# WARNING publish-anywhere: …`).
//!
//! With a base spec (`--from-status` keeps the policy's own spec), the suggestion is that spec
//! with the new presets and rules appended; what its rules already allow, or its deny rules
//! refuse, is not suggested again.

pub mod input;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_yaml_ng::{Mapping, Value};

pub use input::{Decision, DeniedBy, Kind, Line, Observation, parse_line};

use crate::compiled::PolicyEntry;
use crate::contract::API_VERSION;
use crate::lint;
use crate::policy::{HttpRule, Mode, Port, TcpRule, TlsMode};
use crate::presets::PRESETS;
use crate::rules::{self, Host, HttpRequest, RequestPath, RuleSet, RuleSource};

/// Default of [`Options::collapse`].
pub const DEFAULT_COLLAPSE: usize = 5;

/// How the policy is written.
#[derive(Clone, Debug)]
pub struct Options {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when given.
    pub namespace: Option<String>,
    /// `spec.podSelector.matchLabels`.
    pub pod_selector: BTreeMap<String, String>,
    /// `spec.mode`.
    pub mode: Mode,
    /// Everything seen, not only what was denied or would have been.
    pub all: bool,
    /// More than this many distinct paths under a prefix (or sibling hosts under a parent)
    /// become a wildcard.
    pub collapse: usize,
    /// A policy's own spec to start from.
    pub base: Option<Base>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: "suggested".into(),
            namespace: None,
            pod_selector: BTreeMap::new(),
            mode: Mode::Enforce,
            all: false,
            collapse: DEFAULT_COLLAPSE,
            base: None,
        }
    }
}

/// A policy's spec the suggestion extends.
#[derive(Clone, Debug)]
pub struct Base {
    /// The spec as written (kept verbatim, field by field).
    pub spec: Mapping,
    /// The same, read as a policy (its rules decide what is already allowed or denied).
    pub entry: PolicyEntry,
}

/// What `suggest` made.
#[derive(Clone, Debug)]
pub struct Suggestion {
    /// The policy YAML.
    pub yaml: String,
    /// The observations the policy must allow (a test checks it does).
    pub allowed: Vec<Observation>,
    /// The lint's warnings on the suggested rules.
    pub warnings: Vec<lint::Warning>,
}

/// Counts and times of a group of observations.
#[derive(Clone, Debug, Default)]
struct Stats {
    count: u64,
    denied: u64,
    first: Option<String>,
    last: Option<String>,
}

impl Stats {
    fn add(&mut self, o: &Observation) {
        self.count += o.count;
        if o.decision != Decision::Allow {
            self.denied += o.count;
        }
        if let Some(t) = &o.first
            && self.first.as_ref().is_none_or(|f| t < f)
        {
            self.first = Some(t.clone());
        }
        if let Some(t) = &o.last
            && self.last.as_ref().is_none_or(|l| t > l)
        {
            self.last = Some(t.clone());
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.count += other.count;
        self.denied += other.denied;
        if let Some(t) = &other.first
            && self.first.as_ref().is_none_or(|f| t < f)
        {
            self.first = Some(t.clone());
        }
        if let Some(t) = &other.last
            && self.last.as_ref().is_none_or(|l| t > l)
        {
            self.last = Some(t.clone());
        }
    }

    fn comment(&self, (one, many): (&str, &str)) -> String {
        let unit = if self.count == 1 { one } else { many };
        let mut out = format!("{} {unit}, {} denied", self.count, self.denied);
        match (&self.first, &self.last) {
            (Some(f), Some(l)) if f == l => {
                let _ = write!(out, ", {}", clean(f));
            }
            (Some(f), Some(l)) => {
                let _ = write!(out, ", {} .. {}", clean(f), clean(l));
            }
            _ => {}
        }
        out
    }
}

/// Text for a YAML comment: one line, no control characters.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A YAML (and JSON) string.
fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Why an observation is not suggested.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Left {
    /// A deny rule refused it (the rule, when known).
    DenyRule(String),
    /// The private-address guard refused it.
    Guard,
    /// No rule can name its host (`t-`, `-a.com`: no such host can exist).
    Unnameable,
}

/// One suggested rule, before it is written.
#[derive(Clone, Debug)]
struct Suggested {
    http: Option<HttpRule>,
    tcp: Option<TcpRule>,
    stats: Stats,
    unit: (&'static str, &'static str),
    note: Option<&'static str>,
}

/// Why `o` is not suggested, if it is not: a deny rule refused it (or the base policy's deny
/// rules would), the private-address guard did, or no rule can name its host.
fn left_out(o: &Observation, base_says: Option<&BaseVerdict>) -> Option<Left> {
    match (o.denied_by, base_says) {
        (Some(DeniedBy::DenyRule), _) => Some(Left::DenyRule(o.rule.clone().unwrap_or_default())),
        (_, Some(BaseVerdict::Denied(rule))) => Some(Left::DenyRule(rule.clone())),
        (Some(DeniedBy::PrivateAddressGuard), _) => Some(Left::Guard),
        _ if crate::rules::parse_rule(&format!("domain={}", o.host)).is_err() => {
            Some(Left::Unnameable)
        }
        _ => None,
    }
}

/// Makes the policy.
pub fn suggest(observations: &[Observation], options: &Options) -> Suggestion {
    let collapse = options.collapse.max(1);
    let base_rules = options.base.as_ref().and_then(|b| b.entry.compile().ok());
    let base_set = base_rules.map(|r| RuleSet::new(r, Mode::Enforce));
    let mut wanted: Vec<&Observation> = Vec::new();
    let mut left: BTreeMap<(Left, String), Stats> = BTreeMap::new();
    for o in observations {
        let base_says = base_set.as_ref().map(|set| verdict(set, o));
        if let Some(why) = left_out(o, base_says.as_ref()) {
            let what = match why {
                Left::DenyRule(_) => describe(o),
                Left::Guard | Left::Unnameable => o.host.clone(),
            };
            left.entry((why, what)).or_default().add(o);
            continue;
        }
        if matches!(base_says, Some(BaseVerdict::Allowed)) {
            continue;
        }
        if options.all || o.decision != Decision::Allow {
            wanted.push(o);
        }
    }

    let (presets, rest) = choose_presets(&wanted);

    // Sibling hosts past the threshold become `*.parent`.
    let keys = host_keys(&rest, collapse);
    let mut http: BTreeMap<String, Vec<&Observation>> = BTreeMap::new();
    let mut tls: BTreeMap<(String, bool), Vec<&Observation>> = BTreeMap::new();
    let mut tcp: BTreeMap<String, Vec<&Observation>> = BTreeMap::new();
    for o in &rest {
        let key = keys.get(&o.host).cloned().unwrap_or_else(|| o.host.clone());
        match o.kind {
            Kind::Http => http.entry(key).or_default().push(o),
            // Allowed TLS was relayed uninspected (a passthrough rule); refused TLS never got
            // to a request: an HTTP rule for the host is what it lacked.
            Kind::Tls => tls
                .entry((key, o.decision == Decision::Allow))
                .or_default()
                .push(o),
            Kind::Tcp => tcp.entry(key).or_default().push(o),
        }
    }
    let mut suggested: Vec<Suggested> = Vec::new();
    for (domain, list) in &http {
        suggested.extend(http_rules(domain, list, collapse));
    }
    for ((domain, passthrough), list) in &tls {
        let mut stats = Stats::default();
        for o in list {
            stats.add(o);
        }
        let ports = ports_of(list.iter().map(|o| o.port), true);
        let rule = HttpRule {
            domains: vec![domain.clone()],
            ports,
            tls: if *passthrough {
                TlsMode::Passthrough
            } else {
                TlsMode::Intercept
            },
            ..HttpRule::default()
        };
        suggested.push(Suggested {
            http: Some(rule),
            tcp: None,
            stats,
            unit: ("TLS connection", "TLS connections"),
            note: (!passthrough).then_some(
                "refused before any request: its methods and paths were not seen; narrow \
                 them after an Audit run",
            ),
        });
    }
    for (domain, list) in &tcp {
        let mut stats = Stats::default();
        for o in list {
            stats.add(o);
        }
        let ports: BTreeSet<u16> = list.iter().map(|o| o.port).collect();
        suggested.push(Suggested {
            http: None,
            tcp: Some(TcpRule {
                domain: domain.clone(),
                ports: ports.into_iter().filter_map(Port::new).collect(),
            }),
            stats,
            unit: ("connection", "connections"),
            note: None,
        });
    }
    // http rules first (host order), then tcp: as they are written.
    suggested.sort_by_key(|s| s.tcp.is_some());

    let allowed: Vec<Observation> = wanted.iter().map(|o| (*o).clone()).collect();
    write(options, &presets, &suggested, &left, allowed)
}

/// The presets that cover every observed request to their hosts (in [`PRESETS`] order, so a
/// read-only preset wins over its read-write sibling), and the observations left.
fn choose_presets<'o>(wanted: &[&'o Observation]) -> (Vec<(String, Stats)>, Vec<&'o Observation>) {
    let mut presets: Vec<(String, Stats)> = Vec::new();
    let mut rest: Vec<&Observation> = wanted.to_vec();
    for preset in PRESETS {
        let names = vec![preset.name.to_owned()];
        let Ok(compiled) = rules::compile(RuleSource {
            field_prefix: "spec.",
            presets: &names,
            ..RuleSource::default()
        }) else {
            continue;
        };
        let hosts: BTreeSet<String> = compiled
            .iter()
            .filter(|r| !r.is_deny())
            .flat_map(|r| r.domains.iter().flatten())
            .filter_map(rules::DomainPattern::exact_name)
            .collect();
        let set = RuleSet::new(compiled, Mode::Enforce);
        let (mine, others): (Vec<&Observation>, Vec<&Observation>) =
            rest.iter().partition(|o| hosts.contains(&o.host));
        if mine.is_empty()
            || !mine
                .iter()
                .all(|o| verdict(&set, o) == BaseVerdict::Allowed)
        {
            continue;
        }
        let mut stats = Stats::default();
        for o in &mine {
            stats.add(o);
        }
        presets.push((preset.name.to_owned(), stats));
        rest = others;
    }
    (presets, rest)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum BaseVerdict {
    Allowed,
    Denied(String),
    Missing,
}

/// What `set` says of `o` (Enforce).
fn verdict(set: &RuleSet, o: &Observation) -> BaseVerdict {
    let Ok(host) = Host::parse(&o.host) else {
        return BaseVerdict::Missing;
    };
    let v = match (o.kind, &o.method, &o.path) {
        (Kind::Http, Some(method), Some(path)) => {
            let Ok(path) = RequestPath::parse(path) else {
                return BaseVerdict::Missing;
            };
            if o.path_is_prefix {
                // Requests under a prefix: only a whole-host answer is sure.
                return match set.deny_for(&host, o.port) {
                    Some(rule) => BaseVerdict::Denied(rule.origin().to_string()),
                    None => BaseVerdict::Missing,
                };
            }
            let verdict = set.check_http(HttpRequest::new(&host, o.port, method, &path));
            return match verdict {
                rules::Verdict::Allow(_) => BaseVerdict::Allowed,
                rules::Verdict::Denied { by, .. } => BaseVerdict::Denied(by.origin().to_string()),
                rules::Verdict::Deny(_) => BaseVerdict::Missing,
            };
        }
        (Kind::Tcp, _, _) => set.check_tcp(&host, o.port),
        (Kind::Tls, _, _) if o.decision == Decision::Allow => set.check_passthrough(&host, o.port),
        _ => {
            return match set.deny_for(&host, o.port) {
                Some(rule) => BaseVerdict::Denied(rule.origin().to_string()),
                None if set.may_allow_http(&host, o.port) => BaseVerdict::Allowed,
                None => BaseVerdict::Missing,
            };
        }
    };
    match v {
        rules::Verdict::Allow(_) => BaseVerdict::Allowed,
        rules::Verdict::Denied { by, .. } => BaseVerdict::Denied(by.origin().to_string()),
        rules::Verdict::Deny(_) => BaseVerdict::Missing,
    }
}

fn describe(o: &Observation) -> String {
    match (&o.method, &o.path) {
        (Some(m), Some(p)) => format!("{m} {}:{}{p}", o.host, o.port),
        _ => format!("{}:{}", o.host, o.port),
    }
}

/// host → `*.parent` for hosts with more than `collapse` siblings (names only; never under a
/// public suffix, never a host where anyone can publish).
fn host_keys(observations: &[&Observation], collapse: usize) -> BTreeMap<String, String> {
    let mut siblings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in observations {
        if o.host.parse::<std::net::IpAddr>().is_ok() || lint::risky_host(&o.host).is_some() {
            continue;
        }
        if let Some((_, parent)) = o.host.split_once('.')
            && parent.contains('.')
            && !lint::is_public_suffix(parent)
        {
            siblings
                .entry(parent.to_owned())
                .or_default()
                .insert(o.host.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (parent, hosts) in siblings {
        if hosts.len() > collapse && rules::DomainPattern::parse(&format!("*.{parent}")).is_ok() {
            for h in hosts {
                out.insert(h, format!("*.{parent}"));
            }
        }
    }
    out
}

/// The ports to list: none when every one is the scheme's usual (80, 443) and `usual_ok`.
fn ports_of(ports: impl Iterator<Item = u16>, usual_ok: bool) -> Vec<Port> {
    let ports: BTreeSet<u16> = ports.collect();
    if usual_ok && ports.iter().all(|p| *p == 80 || *p == 443) {
        return Vec::new();
    }
    ports.into_iter().filter_map(Port::new).collect()
}

/// A node of the path trie of one host.
#[derive(Default)]
struct Node {
    children: BTreeMap<String, Node>,
    /// Methods and stats of requests to exactly this path.
    here: Option<(BTreeSet<String>, Stats)>,
    /// Methods and stats of requests somewhere under it (a prefix, or a path no pattern can
    /// name).
    under: Option<(BTreeSet<String>, Stats)>,
}

/// A path pattern and what it covers.
struct Covered {
    /// `None`: any path.
    pattern: Option<String>,
    methods: BTreeSet<String>,
    stats: Stats,
}

/// Whether a segment can be written as a literal of a path pattern.
fn literal_segment(segment: &str) -> bool {
    let nameable = !segment.contains('*') && segment != "." && segment != "..";
    nameable && crate::rules::PathPattern::parse(&format!("/{segment}")).is_ok()
}

fn http_rules(domain: &str, list: &[&Observation], collapse: usize) -> Vec<Suggested> {
    // Paths are collapsed method by method (a DELETE of one item must not become a DELETE of
    // every item because many were read); patterns with the same methods then share a rule.
    let mut tries: BTreeMap<&str, Node> = BTreeMap::new();
    for o in list {
        let (Some(method), Some(path)) = (&o.method, &o.path) else {
            continue;
        };
        let root = tries.entry(method.as_str()).or_default();
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let mut under = o.path_is_prefix && path != "/";
        let mut whole = o.path_is_prefix && path == "/";
        let mut depth = 0;
        for (i, segment) in segments.iter().enumerate() {
            if !literal_segment(segment) {
                // Not nameable: the prefix before it, and everything under it.
                under = true;
                whole = i == 0;
                break;
            }
            depth = i + 1;
        }
        let mut node = &mut *root;
        if !whole {
            for segment in &segments[..depth] {
                node = node.children.entry((*segment).to_owned()).or_default();
            }
        }
        let slot = if whole || under {
            &mut node.under
        } else {
            &mut node.here
        };
        let (methods, stats) = slot.get_or_insert_with(Default::default);
        methods.insert(method.clone());
        stats.add(o);
    }
    let mut by_pattern: BTreeMap<Option<String>, (BTreeSet<String>, Stats)> = BTreeMap::new();
    for root in tries.values() {
        for c in collapse_paths(root, "", collapse, true) {
            let (methods, stats) = by_pattern.entry(c.pattern).or_default();
            methods.extend(c.methods);
            stats.merge(&c.stats);
        }
    }
    // One rule per set of methods; any path (`None`) takes in that set's other patterns.
    let mut by_methods: BTreeMap<BTreeSet<String>, (Vec<Option<String>>, Stats)> = BTreeMap::new();
    for (pattern, (methods, stats)) in by_pattern {
        let (patterns, total) = by_methods.entry(methods).or_default();
        patterns.push(pattern);
        total.merge(&stats);
    }
    let ports = ports_of(list.iter().map(|o| o.port), true);
    by_methods
        .into_iter()
        .map(|(methods, (patterns, stats))| {
            let any_path = patterns.iter().any(Option::is_none);
            let paths = if any_path {
                Vec::new()
            } else {
                patterns.into_iter().flatten().collect()
            };
            Suggested {
                http: Some(HttpRule {
                    domains: vec![domain.to_owned()],
                    methods: methods.into_iter().collect(),
                    paths,
                    ports: ports.clone(),
                    ..HttpRule::default()
                }),
                tcp: None,
                stats,
                unit: ("request", "requests"),
                note: None,
            }
        })
        .collect()
}

/// The patterns of a subtree, collapsed bottom-up.
fn collapse_paths(node: &Node, path: &str, collapse: usize, top: bool) -> Vec<Covered> {
    let mut out = Vec::new();
    let here_pattern = if top && path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    };
    if let Some((methods, stats)) = &node.here {
        out.push(Covered {
            pattern: Some(here_pattern),
            methods: methods.clone(),
            stats: stats.clone(),
        });
    }
    let mut below = Vec::new();
    if let Some((methods, stats)) = &node.under {
        below.push(Covered {
            pattern: if top { None } else { Some(format!("{path}/*")) },
            methods: methods.clone(),
            stats: stats.clone(),
        });
    }
    for (segment, child) in &node.children {
        below.extend(collapse_paths(
            child,
            &format!("{path}/{segment}"),
            collapse,
            false,
        ));
    }
    if below.len() > collapse || (top && below.iter().any(|c| c.pattern.is_none())) {
        let mut methods = BTreeSet::new();
        let mut stats = Stats::default();
        for c in &below {
            methods.extend(c.methods.iter().cloned());
            stats.merge(&c.stats);
        }
        if top {
            // Past the threshold at the top: any path, with every method seen.
            for c in &out {
                methods.extend(c.methods.iter().cloned());
                stats.merge(&c.stats);
            }
            return vec![Covered {
                pattern: None,
                methods,
                stats,
            }];
        }
        out.push(Covered {
            pattern: Some(format!("{path}/*")),
            methods,
            stats,
        });
    } else {
        out.extend(below);
    }
    out
}

fn inline(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn inline_ports(ports: &[Port]) -> String {
    let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
    format!("[{}]", list.join(", "))
}

/// A YAML value (old spec fields) indented under `indent` spaces.
fn yaml_block(value: &Value, indent: usize) -> String {
    let text = serde_yaml_ng::to_string(value).unwrap_or_default();
    let pad = " ".repeat(indent);
    text.lines().fold(String::new(), |mut out, line| {
        let _ = writeln!(out, "{pad}{line}");
        out
    })
}

fn old_list<'a>(base: Option<&'a Base>, key: &str) -> &'a [Value] {
    base.and_then(|b| b.spec.get(key))
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

#[allow(clippy::too_many_lines)]
fn write(
    options: &Options,
    presets: &[(String, Stats)],
    suggested: &[Suggested],
    left: &BTreeMap<(Left, String), Stats>,
    allowed: Vec<Observation>,
) -> Suggestion {
    let base = options.base.as_ref();
    // The lint on what this policy will hold (old rules too, so their deny rules count).
    let old_presets: Vec<String> = base.map(|b| b.entry.presets.clone()).unwrap_or_default();
    let old_http: Vec<HttpRule> = base.map(|b| b.entry.http.clone()).unwrap_or_default();
    let old_tcp: Vec<TcpRule> = base.map(|b| b.entry.tcp.clone()).unwrap_or_default();
    let mut entry = base.map(|b| b.entry.clone()).unwrap_or_default();
    entry.name.clone_from(&options.name);
    entry
        .presets
        .extend(presets.iter().map(|(name, _)| name.clone()));
    entry
        .http
        .extend(suggested.iter().filter_map(|s| s.http.clone()));
    entry
        .tcp
        .extend(suggested.iter().filter_map(|s| s.tcp.clone()));
    let warnings = lint::lint_entry(&entry, &[]);
    let warnings_at = |field: &str| -> Vec<&lint::Warning> {
        warnings
            .iter()
            .filter(|w| w.field == field || w.field.starts_with(&format!("{field}.")))
            .collect()
    };

    let mut y = String::new();
    let total: u64 = allowed.iter().map(|o| o.count).sum();
    let _ = writeln!(
        y,
        "# Suggested by `boundary suggest` from {total} request(s) and connection(s) {}.",
        if options.all {
            "seen"
        } else {
            "denied or that would have been"
        }
    );
    y.push_str(
        "# Review every rule before use: it allows what the agent did, not what it should do.\n",
    );
    let _ = writeln!(y, "apiVersion: {API_VERSION}");
    y.push_str("kind: BoundaryPolicy\nmetadata:\n");
    let _ = writeln!(y, "  name: {}", quoted(&options.name));
    if let Some(ns) = &options.namespace {
        let _ = writeln!(y, "  namespace: {}", quoted(ns));
    }
    y.push_str("spec:\n  podSelector:\n");
    if options.pod_selector.is_empty() {
        match base.and_then(|b| b.spec.get("podSelector")) {
            Some(selector) => y.push_str(&yaml_block(selector, 4)),
            None => y.push_str("    matchLabels: {}\n"),
        }
    } else {
        y.push_str("    matchLabels:\n");
        for (k, v) in &options.pod_selector {
            let _ = writeln!(y, "      {}: {}", quoted(k), quoted(v));
        }
    }
    let _ = writeln!(y, "  mode: {}", options.mode.as_str());
    // The base spec's other fields, verbatim.
    if let Some(b) = base {
        for (key, value) in &b.spec {
            let Some(k) = key.as_str() else { continue };
            if ["podSelector", "mode", "presets", "http", "tcp"].contains(&k) {
                continue;
            }
            let _ = writeln!(y, "  {k}:");
            y.push_str(&yaml_block(value, 4));
        }
    }
    if !presets.is_empty() || !old_presets.is_empty() {
        y.push_str("  presets:\n");
        for name in &old_presets {
            let _ = writeln!(y, "    - {}", quoted(name));
        }
        for (i, (name, stats)) in presets.iter().enumerate() {
            let field = format!("spec.presets[{}] ({name})", old_presets.len() + i);
            let _ = writeln!(y, "    # {}", stats.comment(("request", "requests")));
            for w in warnings_at(&field) {
                let _ = writeln!(
                    y,
                    "    # WARNING {} ({}): {}",
                    w.code,
                    w.rule,
                    clean(&w.message)
                );
            }
            let _ = writeln!(y, "    - {}", quoted(name));
        }
    }
    let http: Vec<&Suggested> = suggested.iter().filter(|s| s.http.is_some()).collect();
    if !http.is_empty() || !old_http.is_empty() {
        y.push_str("  http:\n");
        for value in old_list(base, "http") {
            y.push_str(&yaml_block(&Value::Sequence(vec![value.clone()]), 4));
        }
        for (i, s) in http.iter().enumerate() {
            let Some(rule) = &s.http else { continue };
            let field = format!("spec.http[{}]", old_http.len() + i);
            let _ = writeln!(y, "    # {}", s.stats.comment(s.unit));
            if let Some(note) = s.note {
                let _ = writeln!(y, "    # {note}");
            }
            for w in warnings_at(&field) {
                let _ = writeln!(y, "    # WARNING {}: {}", w.code, clean(&w.message));
            }
            let _ = writeln!(y, "    - domains: {}", inline(&rule.domains));
            if !rule.methods.is_empty() {
                let _ = writeln!(y, "      methods: {}", inline(&rule.methods));
            }
            if !rule.paths.is_empty() {
                let _ = writeln!(y, "      paths: {}", inline(&rule.paths));
            }
            if !rule.ports.is_empty() {
                let _ = writeln!(y, "      ports: {}", inline_ports(&rule.ports));
            }
            if rule.tls == TlsMode::Passthrough {
                y.push_str("      tls: Passthrough\n");
            }
        }
    }
    let tcp: Vec<&Suggested> = suggested.iter().filter(|s| s.tcp.is_some()).collect();
    if !tcp.is_empty() || !old_tcp.is_empty() {
        y.push_str("  tcp:\n");
        for value in old_list(base, "tcp") {
            y.push_str(&yaml_block(&Value::Sequence(vec![value.clone()]), 4));
        }
        for (i, s) in tcp.iter().enumerate() {
            let Some(rule) = &s.tcp else { continue };
            let field = format!("spec.tcp[{}]", old_tcp.len() + i);
            let _ = writeln!(y, "    # {}", s.stats.comment(s.unit));
            for w in warnings_at(&field) {
                let _ = writeln!(y, "    # WARNING {}: {}", w.code, clean(&w.message));
            }
            let _ = writeln!(y, "    - domain: {}", quoted(&rule.domain));
            let _ = writeln!(y, "      ports: {}", inline_ports(&rule.ports));
        }
    }
    if !left.is_empty() {
        y.push_str("# Not suggested:\n");
        for ((why, what), stats) in left {
            match why {
                Left::DenyRule(rule) => {
                    let by = if rule.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", clean(rule))
                    };
                    let _ = writeln!(
                        y,
                        "# - {}: denied by a deny rule{by}; not suggested ({})",
                        clean(what),
                        stats.comment(("request", "requests"))
                    );
                }
                Left::Unnameable => {
                    let _ = writeln!(
                        y,
                        "# - {}: no rule can name this host (no such host can exist); not \
                         suggested ({})",
                        clean(what),
                        stats.comment(("request", "requests"))
                    );
                }
                Left::Guard => {
                    let _ = writeln!(
                        y,
                        "# - {}: refused by the private-address guard (its address is private); \
                         if it is meant to be reached, pin it and allow it: resolve: [{{host: {}, \
                         addresses: [\"<its address>\"]}}] ({})",
                        clean(what),
                        quoted(what),
                        stats.comment(("request", "requests"))
                    );
                }
            }
        }
    }
    Suggestion {
        yaml: y,
        allowed,
        warnings,
    }
}

#[cfg(test)]
mod tests;

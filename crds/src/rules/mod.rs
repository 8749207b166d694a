//! The rule engine: one implementation shared by the operator (validation, with positions) and
//! the proxy (enforcement). No I/O.
//!
//! Rules come from Coder-grammar strings ([`grammar`]), structured HTTP rules and TCP rules
//! ([`crate::policy`]). Everything not allowed is denied; several rules are OR'ed.
//!
//! Deny rules (`spec.deny` and `spec.denyHttp` of a `BoundaryPolicy` or `ClusterBoundaryPolicy`,
//! `boundary run --deny`) are Coder-grammar strings or structured rules, and a matching deny rule
//! wins over every allow rule:
//!
//! * an HTTP request (plain, intercepted TLS) is denied when a deny rule matches its host, port,
//!   method, path, headers and query, as an allow rule would ([`Verdict::Denied`]); a deny rule's
//!   header and query conditions are read broadly ([`conditions`]: any occurrence, either
//!   reading of the query, a query that cannot be decoded);
//! * a connection the proxy cannot look into (a TCP rule's, TLS passthrough, a CONNECT tunnel
//!   before interception) is denied when a deny rule matches its host and port, whatever the
//!   rule's method, path, headers and query: the proxy cannot tell, so it fails closed
//!   ([`RuleSet::deny_for`]);
//! * TLS is refused before a certificate is minted when a deny rule with neither method, path nor
//!   conditions matches the host and port ([`RuleSet::may_allow_http`]);
//! * a deny rule without `domain=`, or with `domain=*`, matches IP literals too (an allow rule's
//!   `*` does not: denying is the safe side);
//! * connections to the pod's own loopback (`podLocal` rules, by port only) are not affected: a
//!   deny rule names hosts, and those have none.
//!
//! Allow rules with header or query conditions ([`conditions`]) hold only when every occurrence
//! matches under every reading of the request; they cannot be `Passthrough` (the proxy would not
//! see the headers). Structured deny rules cannot be `Passthrough` either.

pub mod conditions;
pub mod grammar;
pub mod host;
pub mod path;

use std::fmt;
use std::sync::Arc;

use crate::contract::ports;
use crate::policy::{HttpRule, Mode, PodLocalRule, TcpRule, TlsMode};
use crate::presets;
pub use conditions::{Conditions, Side, raw_query};
pub use grammar::{GrammarError, ParsedRule, parse_rule};
pub use host::{DomainPattern, Host, HostError};
pub use path::{PathError, PathPattern, RequestPath};

/// Where a rule came from, for audit records, 403 bodies and status problems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOrigin {
    /// The policy's name, or `None` for command-line and config-file rules.
    pub policy: Option<String>,
    /// The policy is a `ClusterBoundaryPolicy` (the cluster administrators'), not a namespace's
    /// `BoundaryPolicy`.
    pub cluster: bool,
    /// The rule's place: `spec.allow[2]`, `spec.http[0]`, `--allow[1]`.
    pub field: String,
    /// The rule as written (strings) or summarised (structured rules).
    pub text: String,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Some(policy) if self.cluster => write!(
                f,
                "ClusterBoundaryPolicy {policy} {}: {}",
                self.field, self.text
            ),
            Some(policy) => write!(f, "{policy} {}: {}", self.field, self.text),
            None => write!(f, "{}: {}", self.field, self.text),
        }
    }
}

/// What a rule lets through (or, for [`RuleKind::Deny`], refuses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// HTTP requests (plain or intercepted TLS); `None` lists match everything.
    Http {
        /// Upper-case methods.
        methods: Option<Vec<String>>,
        /// Path patterns.
        paths: Option<Vec<PathPattern>>,
        /// Header and query conditions (structured rules only).
        conditions: Conditions,
    },
    /// TLS connections relayed without interception, by SNI name.
    TlsPassthrough,
    /// Plain TCP connections, by the DNS name the jail handed out.
    Tcp,
    /// TCP connections to the pod's own loopback, by port only (no host: it is always the
    /// pod's loopback). Never matched by name checks.
    PodLocal,
    /// A deny rule: refuses what it matches, whatever allows it. `None` lists match everything.
    Deny {
        /// Upper-case methods.
        methods: Option<Vec<String>>,
        /// Path patterns.
        paths: Option<Vec<PathPattern>>,
        /// Header and query conditions (structured deny rules only); any doubt makes them hold.
        conditions: Conditions,
    },
}

/// A compiled rule: an allow rule, or a deny rule ([`RuleKind::Deny`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Where it came from (read through [`Rule::origin`], so that `named` stays its text).
    origin: RuleOrigin,
    /// What it allows or denies.
    pub kind: RuleKind,
    /// Host patterns; `None` matches every host name (a left-out `domain=`).
    pub domains: Option<Vec<DomainPattern>>,
    /// Destination ports; `None` matches every port.
    pub ports: Option<Vec<u16>>,
    /// `origin` as text, made once: audit records name the rule of every request it decides.
    named: Arc<str>,
}

impl Rule {
    fn new(
        origin: RuleOrigin,
        kind: RuleKind,
        domains: Option<Vec<DomainPattern>>,
        ports: Option<Vec<u16>>,
    ) -> Rule {
        Rule {
            named: origin.to_string().into(),
            origin,
            kind,
            domains,
            ports,
        }
    }

    /// Where it came from.
    pub fn origin(&self) -> &RuleOrigin {
        &self.origin
    }

    /// Where it came from, as audit records name it (`origin`'s `Display`).
    pub fn named(&self) -> &Arc<str> {
        &self.named
    }

    /// The same rule, at another place (`field`) of its policy.
    fn placed(self, field: &str) -> Rule {
        let origin = RuleOrigin {
            field: field.to_owned(),
            ..self.origin
        };
        Rule::new(origin, self.kind, self.domains, self.ports)
    }

    fn host_matches(&self, host: &Host) -> bool {
        match &self.domains {
            None => matches!(host, Host::Name(_)),
            Some(domains) => domains.iter().any(|d| d.matches(host)),
        }
    }

    fn port_matches(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(&port))
    }

    /// A deny rule's host check: no `domain=`, or `*`, covers IP literals too (fail closed).
    fn deny_host_matches(&self, host: &Host) -> bool {
        match &self.domains {
            None => true,
            Some(domains) => domains
                .iter()
                .any(|d| *d == DomainPattern::AnyName || d.matches(host)),
        }
    }

    /// Whether this deny rule matches a connection to `host:port` (its method and path unseen).
    fn denies_connection(&self, host: &Host, port: u16) -> bool {
        self.deny_host_matches(host) && self.port_matches(port)
    }

    /// Whether this deny rule matches every request to `host:port` (no method, path, header or
    /// query condition).
    fn denies_whole_host(&self, host: &Host, port: u16) -> bool {
        matches!(
            &self.kind,
            RuleKind::Deny {
                methods: None,
                paths: None,
                conditions,
            } if conditions.is_empty()
        ) && self.denies_connection(host, port)
    }

    /// Whether this deny rule matches an HTTP request.
    fn denies_request(&self, req: HttpRequest<'_>) -> bool {
        let RuleKind::Deny {
            methods,
            paths,
            conditions,
        } = &self.kind
        else {
            return false;
        };
        self.denies_connection(req.host, req.port)
            && methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| m == req.method))
            && paths
                .as_ref()
                .is_none_or(|p| p.iter().any(|p| p.matches(req.path)))
            && conditions.hold(Side::Deny, req.extras())
    }

    /// Whether this is a deny rule.
    pub fn is_deny(&self) -> bool {
        matches!(self.kind, RuleKind::Deny { .. })
    }
}

/// A problem found while compiling rules, in the shape of the CRD's `status.ruleProblems`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The `BoundaryPolicy` name, if any.
    pub policy: Option<String>,
    /// `spec.allow[2]`, `spec.http[0].paths[1]`, `--allow[0]`.
    pub field: String,
    /// 1-based column inside a rule string.
    pub column: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(policy) = &self.policy {
            write!(f, "{policy}: ")?;
        }
        write!(f, "{}", self.field)?;
        if let Some(column) = self.column {
            write!(f, " column {column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Rules that did not compile; every problem is listed, not just the first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} invalid rule(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct CompileErrors(pub Vec<Problem>);

/// The rules of one source (a policy, or the command line) before compilation.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleSource<'a> {
    /// Policy name, `None` for the command line and config file.
    pub policy: Option<&'a str>,
    /// The policy is a `ClusterBoundaryPolicy`.
    pub cluster: bool,
    /// Prefix of field paths: `spec.` for policies, `--` for flags.
    pub field_prefix: &'a str,
    /// Coder-grammar deny rules.
    pub deny: &'a [String],
    /// Structured deny rules.
    pub deny_http: &'a [HttpRule],
    /// Names of presets whose rules join these.
    pub presets: &'a [String],
    /// Coder-grammar strings.
    pub allow: &'a [String],
    /// Structured HTTP rules.
    pub http: &'a [HttpRule],
    /// TCP rules.
    pub tcp: &'a [TcpRule],
    /// Pod-local port rules.
    pub pod_local: &'a [PodLocalRule],
}

/// Compiles the rules of one source, collecting every problem.
pub fn compile(source: RuleSource<'_>) -> Result<Vec<Rule>, CompileErrors> {
    let mut c = Compiler {
        policy: source.policy.map(str::to_owned),
        cluster: source.cluster,
        prefix: source.field_prefix,
        rules: Vec::new(),
        problems: Vec::new(),
    };
    for (i, text) in source.deny.iter().enumerate() {
        c.grammar("deny", i, text);
    }
    for (i, rule) in source.deny_http.iter().enumerate() {
        c.http(Side::Deny, i, rule);
    }
    for (i, name) in source.presets.iter().enumerate() {
        c.preset(i, name);
    }
    for (i, text) in source.allow.iter().enumerate() {
        c.grammar("allow", i, text);
    }
    for (i, rule) in source.http.iter().enumerate() {
        c.http(Side::Allow, i, rule);
    }
    for (i, rule) in source.tcp.iter().enumerate() {
        c.tcp(i, rule);
    }
    for (i, rule) in source.pod_local.iter().enumerate() {
        c.pod_local(i, rule);
    }
    if c.problems.is_empty() {
        Ok(c.rules)
    } else {
        Err(CompileErrors(c.problems))
    }
}

struct Compiler<'a> {
    policy: Option<String>,
    cluster: bool,
    prefix: &'a str,
    rules: Vec<Rule>,
    problems: Vec<Problem>,
}

impl Compiler<'_> {
    fn problem(&mut self, field: String, column: Option<usize>, message: String) {
        self.problems.push(Problem {
            policy: self.policy.clone(),
            field,
            column,
            message,
        });
    }

    fn push(
        &mut self,
        field: String,
        text: String,
        kind: RuleKind,
        domains: Option<Vec<DomainPattern>>,
        ports: Option<Vec<u16>>,
    ) {
        let origin = RuleOrigin {
            policy: self.policy.clone(),
            cluster: self.cluster,
            field,
            text,
        };
        self.rules.push(Rule::new(origin, kind, domains, ports));
    }

    /// The rules of preset `name`, named `spec.presets[i] (NAME)` (`--preset[i] (NAME)`) in
    /// their origins and problems, with the rule itself after the colon.
    fn preset(&mut self, i: usize, name: &str) {
        let list = if self.prefix == "--" {
            "preset"
        } else {
            "presets"
        };
        let field = format!("{}{list}[{i}]", self.prefix);
        let Some(preset) = presets::find(name.trim()) else {
            self.problem(
                field,
                None,
                format!(
                    "unknown preset {name:?}; the presets are: {} (`boundary presets list`)",
                    presets::names()
                ),
            );
            return;
        };
        let place = format!("{field} ({})", preset.name);
        let rules = preset.rules();
        let compiled = compile(RuleSource {
            policy: self.policy.as_deref(),
            cluster: self.cluster,
            field_prefix: "",
            deny: &rules.deny,
            deny_http: &rules.deny_http,
            allow: &rules.allow,
            http: &rules.http,
            ..RuleSource::default()
        });
        match compiled {
            Ok(compiled) => self
                .rules
                .extend(compiled.into_iter().map(|rule| rule.placed(&place))),
            // A preset this engine cannot compile (data newer than its engine): never half of it.
            Err(CompileErrors(problems)) => {
                for p in problems {
                    self.problem(format!("{place} {}", p.field), p.column, p.message);
                }
            }
        }
    }

    /// A Coder-grammar string of the `allow` or `deny` list.
    fn grammar(&mut self, list: &str, i: usize, text: &str) {
        let field = format!("{}{list}[{i}]", self.prefix);
        match parse_rule(text) {
            Ok(parsed) => {
                let kind = if list == "deny" {
                    RuleKind::Deny {
                        methods: parsed.methods,
                        paths: parsed.paths,
                        conditions: Conditions::default(),
                    }
                } else {
                    RuleKind::Http {
                        methods: parsed.methods,
                        paths: parsed.paths,
                        conditions: Conditions::default(),
                    }
                };
                self.push(
                    field,
                    text.trim().to_owned(),
                    kind,
                    parsed.domains,
                    parsed.ports,
                );
            }
            Err(e) => self.problem(field, Some(e.column), e.message),
        }
    }

    /// A structured rule of `http` (allow) or `denyHttp` (deny).
    fn http(&mut self, side: Side, i: usize, rule: &HttpRule) {
        let list = match side {
            Side::Allow => "http",
            Side::Deny => "denyHttp",
        };
        let field = format!("{}{list}[{i}]", self.prefix);
        let before = self.problems.len();
        if rule.domains.is_empty() {
            self.problem(
                format!("{field}.domains"),
                None,
                "at least one domain is required".into(),
            );
        }
        let mut domains = Vec::new();
        for (j, d) in rule.domains.iter().enumerate() {
            match DomainPattern::parse(d) {
                Ok(p) => domains.push(p),
                Err(e) => self.problem(format!("{field}.domains[{j}]"), None, e.message),
            }
        }
        let mut methods = Vec::new();
        for (j, m) in rule.methods.iter().enumerate() {
            match parse_rule(&format!("method={m}")) {
                Ok(parsed) if !m.contains(',') => {
                    methods.extend(parsed.methods.unwrap_or_else(|| vec!["*".into()]));
                }
                _ => self.problem(
                    format!("{field}.methods[{j}]"),
                    None,
                    format!("invalid HTTP method {m:?}"),
                ),
            }
        }
        let conditions = self.conditions(&field, rule);
        let mut paths = Vec::new();
        for (j, p) in rule.paths.iter().enumerate() {
            match PathPattern::parse(p) {
                Ok(p) => paths.push(p),
                Err(e) => self.problem(format!("{field}.paths[{j}]"), None, e.message),
            }
        }
        let methods = (!methods.is_empty() && !methods.iter().any(|m| m == "*")).then_some(methods);
        let paths = (!paths.is_empty()).then_some(paths);
        let kind = match (side, rule.tls) {
            (Side::Allow, TlsMode::Intercept) => RuleKind::Http {
                methods,
                paths,
                conditions,
            },
            (Side::Deny, TlsMode::Intercept) => RuleKind::Deny {
                methods,
                paths,
                conditions,
            },
            (Side::Deny, TlsMode::Passthrough) => {
                self.problem(
                    format!("{field}.tls"),
                    None,
                    "a deny rule cannot be Passthrough: it refuses what it matches, whether the \
                     proxy looks inside the connection or not; remove `tls`"
                        .into(),
                );
                RuleKind::TlsPassthrough
            }
            (Side::Allow, TlsMode::Passthrough) => {
                if !rule.methods.is_empty()
                    || !rule.paths.is_empty()
                    || !rule.headers.is_empty()
                    || !rule.query.is_empty()
                {
                    self.problem(
                        format!("{field}.tls"),
                        None,
                        "a Passthrough rule cannot check methods, paths, headers or query (the \
                         proxy does not see inside the TLS connection): remove them or use \
                         Intercept"
                            .into(),
                    );
                }
                RuleKind::TlsPassthrough
            }
        };
        if self.problems.len() == before {
            let ports =
                (!rule.ports.is_empty()).then(|| rule.ports.iter().map(|p| p.get()).collect());
            self.push(field, summarize_http(rule), kind, Some(domains), ports);
        }
    }

    /// The header and query conditions of a structured rule; problems at
    /// `…headers.NAME` / `…query.NAME`, with the column in the name or the value.
    fn conditions(&mut self, field: &str, rule: &HttpRule) -> Conditions {
        let mut conditions = Conditions::default();
        for (name, glob) in &rule.headers {
            if let Err(e) = conditions.add_header(name, glob) {
                let what = if e.in_value { "value" } else { "name" };
                self.problem(
                    format!("{field}.headers.{name}"),
                    Some(e.column),
                    format!("header {what}: {}", e.message),
                );
            }
        }
        for (name, glob) in &rule.query {
            if let Err(e) = conditions.add_query(name, glob) {
                let what = if e.in_value { "value" } else { "name" };
                self.problem(
                    format!("{field}.query.{name}"),
                    Some(e.column),
                    format!("query parameter {what}: {}", e.message),
                );
            }
        }
        conditions
    }

    fn tcp(&mut self, i: usize, rule: &TcpRule) {
        let field = format!("{}tcp[{i}]", self.prefix);
        let domain = match DomainPattern::parse(&rule.domain) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(format!("{field}.domain"), None, e.message);
                None
            }
        };
        if rule.ports.is_empty() {
            self.problem(
                format!("{field}.ports"),
                None,
                "at least one port is required".into(),
            );
            return;
        }
        if let Some(domain) = domain {
            let ports: Vec<u16> = rule.ports.iter().map(|p| p.get()).collect();
            let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
            let text = format!("tcp {} port {}", rule.domain, list.join(","));
            self.push(field, text, RuleKind::Tcp, Some(vec![domain]), Some(ports));
        }
    }

    fn pod_local(&mut self, i: usize, rule: &PodLocalRule) {
        // Flags and config files say `--allow-pod-local`, policies `spec.podLocal`.
        let name = if self.prefix == "--" {
            "allow-pod-local"
        } else {
            "podLocal"
        };
        let field = format!("{}{name}[{i}]", self.prefix);
        let before = self.problems.len();
        if rule.ports.is_empty() {
            self.problem(
                format!("{field}.ports"),
                None,
                "at least one port is required".into(),
            );
        }
        for (j, port) in rule.ports.iter().enumerate() {
            if let Some(what) = reserved_port_use(port.get()) {
                self.problem(
                    format!("{field}.ports[{j}]"),
                    None,
                    format!(
                        "port {port} cannot be pod-local: it is {what}; remove it (the pod's \
                         server must listen on another port)"
                    ),
                );
            }
        }
        if self.problems.len() > before {
            return;
        }
        let ports: Vec<u16> = rule.ports.iter().map(|p| p.get()).collect();
        let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let text = match rule.description.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() => format!("podLocal ports={} ({d})", list.join(",")),
            _ => format!("podLocal ports={}", list.join(",")),
        };
        // No host pattern at all: name checks never match it.
        self.push(
            field,
            text,
            RuleKind::PodLocal,
            Some(Vec::new()),
            Some(ports),
        );
    }
}

/// What a port that cannot be pod-local is used for; `None` for every other port.
pub fn reserved_port_use(port: u16) -> Option<&'static str> {
    match port {
        ports::JAIL_FORWARDER => Some("the jail's own TCP forwarder"),
        ports::JAIL_DNS => Some("the jail's own DNS server (the jail answers every DNS query)"),
        ports::EXPLICIT_PROXY => Some("the boundary sidecar's explicit proxy"),
        ports::SIDECAR_METRICS => Some("the boundary sidecar's metrics and health endpoint"),
        _ => None,
    }
}

fn summarize_http(rule: &HttpRule) -> String {
    let mut parts = vec![format!("domains={}", rule.domains.join(","))];
    if !rule.methods.is_empty() {
        parts.push(format!("methods={}", rule.methods.join(",")));
    }
    if !rule.paths.is_empty() {
        parts.push(format!("paths={}", rule.paths.join(",")));
    }
    if !rule.ports.is_empty() {
        let list: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
        parts.push(format!("ports={}", list.join(",")));
    }
    for (what, pairs) in [("headers", &rule.headers), ("query", &rule.query)] {
        if !pairs.is_empty() {
            let list: Vec<String> = pairs.iter().map(|(n, g)| format!("{n}:{g}")).collect();
            parts.push(format!("{what}={}", list.join(",")));
        }
    }
    if rule.tls == TlsMode::Passthrough {
        parts.push("tls=Passthrough".into());
    }
    parts.join(" ")
}

/// The facts of one HTTP request, normalised.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    /// The destination host.
    pub host: &'a Host,
    /// The destination port.
    pub port: u16,
    /// The method, as sent.
    pub method: &'a str,
    /// The normalised path.
    pub path: &'a RequestPath,
    /// The header fields, one entry per field line: names as sent, values as bytes.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The raw query (after `?`, before `#`), `None` when the target has none
    /// ([`raw_query`]).
    pub query: Option<&'a str>,
}

impl<'a> HttpRequest<'a> {
    /// A request with no headers and no query (for checks that only know the destination).
    pub fn new(host: &'a Host, port: u16, method: &'a str, path: &'a RequestPath) -> Self {
        HttpRequest {
            host,
            port,
            method,
            path,
            headers: &[],
            query: None,
        }
    }

    fn extras(self) -> conditions::RequestExtras<'a> {
        conditions::RequestExtras {
            headers: self.headers,
            query: self.query,
        }
    }
}

/// Why a rule for the right host did not allow a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The method is not in the rule's list.
    Method,
    /// No path pattern matches.
    Path,
    /// The port is not in the rule's list.
    Port,
    /// A header condition does not hold.
    Header,
    /// A query condition does not hold.
    Query,
    /// The rule allows plain TCP or TLS passthrough to this host, not intercepted HTTP.
    NotHttp,
}

impl Miss {
    /// A few words for a 403 body or log line.
    pub fn describe(self) -> &'static str {
        match self {
            Miss::Method => "method not allowed by",
            Miss::Path => "path not allowed by",
            Miss::Port => "port not allowed by",
            Miss::Header => "headers not allowed by",
            Miss::Query => "query not allowed by",
            Miss::NotHttp => "host allowed only for TCP/passthrough by",
        }
    }
}

/// The outcome of checking a request or connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Allowed by this rule.
    Allow(&'a Rule),
    /// A deny rule matches: denied whatever allows it; no allow rule can change that.
    Denied {
        /// The deny rule (the first that matches).
        by: &'a Rule,
        /// The allow rule it beats, when one would have allowed it.
        overrides: Option<&'a Rule>,
    },
    /// No rule allows it; rules for the same host that missed on something else.
    Deny(Vec<(&'a Rule, Miss)>),
}

impl<'a> Verdict<'a> {
    /// Whether a rule allows it.
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }

    /// The deny rule that refuses it, if one does.
    pub fn deny_rule(&self) -> Option<&'a Rule> {
        match self {
            Verdict::Denied { by, .. } => Some(by),
            _ => None,
        }
    }
}

/// A compiled, immutable set of rules with the mode that applies to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    deny: Vec<Rule>,
    mode: Mode,
}

impl RuleSet {
    /// A rule set in `mode`; deny rules among `rules` are kept apart and checked first.
    pub fn new(rules: Vec<Rule>, mode: Mode) -> Self {
        let (deny, rules) = rules.into_iter().partition(Rule::is_deny);
        RuleSet { rules, deny, mode }
    }

    /// The allow rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The deny rules.
    pub fn deny_rules(&self) -> &[Rule] {
        &self.deny
    }

    /// Enforce or Audit.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Checks an HTTP request (plain or intercepted): a matching deny rule first, then the
    /// allow rules.
    pub fn check_http(&self, req: HttpRequest<'_>) -> Verdict<'_> {
        let verdict = self.allow_http(req);
        match self.deny.iter().find(|d| d.denies_request(req)) {
            Some(by) => Verdict::Denied {
                by,
                overrides: match verdict {
                    Verdict::Allow(rule) => Some(rule),
                    _ => None,
                },
            },
            None => verdict,
        }
    }

    fn allow_http(&self, req: HttpRequest<'_>) -> Verdict<'_> {
        let mut misses = Vec::new();
        for rule in &self.rules {
            if rule.kind == RuleKind::PodLocal || !rule.host_matches(req.host) {
                continue;
            }
            let RuleKind::Http {
                methods,
                paths,
                conditions,
            } = &rule.kind
            else {
                misses.push((rule, Miss::NotHttp));
                continue;
            };
            if !rule.port_matches(req.port) {
                misses.push((rule, Miss::Port));
            } else if methods
                .as_ref()
                .is_some_and(|m| !m.iter().any(|m| m == req.method))
            {
                misses.push((rule, Miss::Method));
            } else if paths
                .as_ref()
                .is_some_and(|p| !p.iter().any(|p| p.matches(req.path)))
            {
                misses.push((rule, Miss::Path));
            } else if !conditions.headers_hold(Side::Allow, req.headers) {
                misses.push((rule, Miss::Header));
            } else if !conditions.query_holds(Side::Allow, req.query) {
                misses.push((rule, Miss::Query));
            } else {
                return Verdict::Allow(rule);
            }
        }
        Verdict::Deny(misses)
    }

    /// A plain TCP connection: allowed only by a TCP rule, and denied by any deny rule for its
    /// host and port (the proxy cannot see a method or path in it).
    pub fn check_tcp(&self, host: &Host, port: u16) -> Verdict<'_> {
        self.check_connection(host, port, |k| matches!(k, RuleKind::Tcp))
    }

    /// A TLS connection whose SNI is `host`: relayed without interception only by a Passthrough
    /// rule, and denied by any deny rule for its host and port.
    pub fn check_passthrough(&self, host: &Host, port: u16) -> Verdict<'_> {
        self.check_connection(host, port, |k| matches!(k, RuleKind::TlsPassthrough))
    }

    fn check_connection(
        &self,
        host: &Host,
        port: u16,
        kind: impl Fn(&RuleKind) -> bool,
    ) -> Verdict<'_> {
        let allow = self.find(host, port, kind);
        match (self.deny_for(host, port), allow) {
            (Some(by), overrides) => Verdict::Denied { by, overrides },
            (None, Some(rule)) => Verdict::Allow(rule),
            (None, None) => Verdict::Deny(Vec::new()),
        }
    }

    /// The deny rule (the first) that refuses a connection to `host:port` whose requests the
    /// proxy cannot see: any deny rule for that host and port, whatever its method and path.
    pub fn deny_for(&self, host: &Host, port: u16) -> Option<&Rule> {
        self.deny.iter().find(|d| d.denies_connection(host, port))
    }

    /// The deny rule (the first) that refuses every request to `host:port`: one with neither
    /// method nor path.
    pub fn whole_host_deny(&self, host: &Host, port: u16) -> Option<&Rule> {
        self.deny.iter().find(|d| d.denies_whole_host(host, port))
    }

    /// Whether some HTTP rule could allow a request to `host:port`: if not, a TLS connection is
    /// denied before any interception (no certificate is minted for it). False also when a deny
    /// rule refuses every request to it ([`RuleSet::whole_host_deny`]).
    pub fn may_allow_http(&self, host: &Host, port: u16) -> bool {
        self.whole_host_deny(host, port).is_none()
            && self
                .find(host, port, |k| matches!(k, RuleKind::Http { .. }))
                .is_some()
    }

    /// A TCP connection to `port` on the pod's loopback: allowed only by a pod-local rule. Deny
    /// rules do not apply (they name hosts; the pod's loopback has none).
    pub fn check_pod_local(&self, port: u16) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.kind == RuleKind::PodLocal && r.port_matches(port))
    }

    fn find(&self, host: &Host, port: u16, kind: impl Fn(&RuleKind) -> bool) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| kind(&r.kind) && r.host_matches(host) && r.port_matches(port))
    }
}

/// Rules that would allow a denied request, narrowest first, in the grammar of `--allow` and
/// `spec.allow`.
pub fn suggest(req: HttpRequest<'_>) -> Vec<String> {
    let host = match req.host {
        Host::Name(n) => n.clone(),
        Host::Ip(ip) => ip.to_string(),
    };
    let path = req.path.to_string();
    let method_ok = !req.method.is_empty()
        && req.method.len() <= 32
        && req
            .method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&'+-.^_`|~".contains(&b));
    let mut out = Vec::new();
    if method_ok {
        if path != "/" && path != "*" {
            out.push(format!("domain={host} method={} path={path}", req.method));
        }
        out.push(format!("domain={host} method={}", req.method));
    }
    out.push(format!("domain={host}"));
    // A host no rule can name (`-a.com`: it cannot exist) gets no suggestion at all.
    out.retain(|rule| parse_rule(rule).is_ok());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Port;

    /// Each problem's field and column, in order.
    fn places(problems: &[Problem]) -> Vec<(&str, Option<usize>)> {
        problems
            .iter()
            .map(|p| (p.field.as_str(), p.column))
            .collect()
    }

    fn rules(allow: &[&str]) -> RuleSet {
        let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        let compiled = compile(RuleSource {
            field_prefix: "--",
            allow: &allow,
            ..RuleSource::default()
        })
        .unwrap();
        RuleSet::new(compiled, Mode::Enforce)
    }

    fn check<'a>(set: &'a RuleSet, method: &str, host: &str, port: u16, path: &str) -> Verdict<'a> {
        let host = Host::parse(host).unwrap();
        let path = RequestPath::parse(path).unwrap();
        set.check_http(HttpRequest {
            host: &host,
            port,
            method,
            path: &path,
            headers: &[],
            query: None,
        })
        .clone()
    }

    #[test]
    fn default_deny_and_or_of_rules() {
        let set = rules(&[
            "domain=github.com method=GET",
            "domain=api.example.com path=/v1/*",
        ]);
        assert!(check(&set, "GET", "github.com", 443, "/x").is_allow());
        assert!(check(&set, "POST", "api.example.com", 443, "/v1/a").is_allow());
        assert!(!check(&set, "GET", "example.com", 443, "/").is_allow());
        assert!(
            !rules(&[])
                .check_http(HttpRequest {
                    host: &Host::parse("a.com").unwrap(),
                    port: 80,
                    method: "GET",
                    path: &RequestPath::parse("/").unwrap(),
                    headers: &[],
                    query: None,
                })
                .is_allow()
        );
    }

    #[test]
    fn denials_explain_near_misses() {
        let set = rules(&[
            "domain=github.com method=GET",
            "domain=github.com path=/api/*",
            "domain=github.com port=443",
        ]);
        let Verdict::Deny(misses) = check(&set, "POST", "github.com", 8443, "/admin") else {
            panic!("allowed")
        };
        let kinds: Vec<Miss> = misses.iter().map(|(_, m)| *m).collect();
        assert_eq!(kinds, [Miss::Method, Miss::Path, Miss::Port]);
        assert_eq!(
            misses[0].0.origin.to_string(),
            "--allow[0]: domain=github.com method=GET"
        );
    }

    #[test]
    fn bypass_attempts_are_denied() {
        let set = rules(&["domain=*.github.com", "domain=api.example.com path=/api/*"]);
        assert!(!check(&set, "GET", "evilgithub.com", 443, "/").is_allow());
        assert!(!check(&set, "GET", "GITHUB.COM.", 443, "/").is_allow());
        assert!(check(&set, "GET", "API.GITHUB.COM.", 443, "/").is_allow());
        assert!(!check(&set, "GET", "api.example.com", 443, "/api/../admin").is_allow());
        assert!(!check(&set, "GET", "api.example.com", 443, "/api/%2e%2e/admin").is_allow());
        assert!(
            !check(&set, "GET", "140.82.112.3", 443, "/").is_allow(),
            "IP literal"
        );
        let ip = rules(&["domain=140.82.112.0/20"]);
        assert!(check(&ip, "GET", "140.82.112.3", 443, "/").is_allow());
    }

    #[test]
    fn structured_and_tcp_rules() {
        let http = [
            HttpRule {
                domains: vec!["*.npmjs.org".into()],
                methods: vec!["get".into(), "HEAD".into()],
                ports: vec![Port::new(443).unwrap()],
                ..HttpRule::default()
            },
            HttpRule {
                domains: vec!["pinned.example.com".into()],
                tls: TlsMode::Passthrough,
                ..HttpRule::default()
            },
        ];
        let tcp = [TcpRule {
            domain: "github.com".into(),
            ports: vec![Port::new(22).unwrap()],
        }];
        let compiled = compile(RuleSource {
            policy: Some("agents"),
            field_prefix: "spec.",
            http: &http,
            tcp: &tcp,
            ..RuleSource::default()
        })
        .unwrap();
        let set = RuleSet::new(compiled, Mode::Audit);
        assert!(check(&set, "GET", "registry.npmjs.org", 443, "/x").is_allow());
        assert!(!check(&set, "GET", "registry.npmjs.org", 80, "/x").is_allow());
        assert!(!check(&set, "PUT", "registry.npmjs.org", 443, "/x").is_allow());
        let gh = Host::parse("github.com").unwrap();
        assert!(set.check_tcp(&gh, 22).is_allow());
        assert!(!set.check_tcp(&gh, 443).is_allow());
        assert!(
            !set.may_allow_http(&gh, 22),
            "a TCP rule does not allow HTTP"
        );
        let pinned = Host::parse("pinned.example.com").unwrap();
        assert!(set.check_passthrough(&pinned, 443).is_allow());
        assert!(!set.may_allow_http(&pinned, 443));
        assert_eq!(
            set.rules()[0].origin.to_string(),
            "agents spec.http[0]: domains=*.npmjs.org methods=get,HEAD ports=443"
        );
        assert_eq!(set.mode(), Mode::Audit);
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let allow = vec![
            "domain=ok.com".to_owned(),
            "domain=bad.* method=GET".to_owned(),
            "metod=GET".to_owned(),
        ];
        let http = [
            HttpRule {
                domains: vec!["a.com".into(), "b..com".into()],
                paths: vec!["nope".into()],
                ..HttpRule::default()
            },
            HttpRule {
                domains: vec!["c.com".into()],
                methods: vec!["GET".into()],
                tls: TlsMode::Passthrough,
                ..HttpRule::default()
            },
        ];
        let tcp = [TcpRule {
            domain: "x.*".into(),
            ports: vec![],
        }];
        let CompileErrors(problems) = compile(RuleSource {
            policy: Some("p"),
            field_prefix: "spec.",
            allow: &allow,
            http: &http,
            tcp: &tcp,
            pod_local: &[],
            ..RuleSource::default()
        })
        .unwrap_err();
        assert_eq!(
            places(&problems),
            [
                ("spec.allow[1]", Some(12)),
                ("spec.allow[2]", Some(1)),
                ("spec.http[0].domains[1]", None),
                ("spec.http[0].paths[0]", None),
                ("spec.http[1].tls", None),
                ("spec.tcp[0].domain", None),
                ("spec.tcp[0].ports", None),
            ]
        );
        assert!(problems.iter().all(|p| p.policy.as_deref() == Some("p")));
    }

    fn pod_local(ports: &[u16], description: Option<&str>) -> PodLocalRule {
        PodLocalRule {
            ports: ports.iter().map(|p| Port::new(*p).unwrap()).collect(),
            description: description.map(str::to_owned),
        }
    }

    #[test]
    fn pod_local_rules_allow_ports_of_the_pods_loopback_and_nothing_by_name() {
        let pod_local_rules = [
            pod_local(&[5432, 2375], Some(" cloud-sql-proxy ")),
            pod_local(&[8080], None),
        ];
        let allow = vec![
            "domain=127.0.0.0/8".to_owned(),
            "domain=localhost".to_owned(),
        ];
        let compiled = compile(RuleSource {
            policy: Some("agents"),
            field_prefix: "spec.",
            allow: &allow,
            pod_local: &pod_local_rules,
            ..RuleSource::default()
        })
        .unwrap();
        let set = RuleSet::new(compiled, Mode::Enforce);
        // (port, allowed by): the decision is by port alone.
        let table: [(u16, Option<&str>); 5] = [
            (
                5432,
                Some("agents spec.podLocal[0]: podLocal ports=5432,2375 (cloud-sql-proxy)"),
            ),
            (
                2375,
                Some("agents spec.podLocal[0]: podLocal ports=5432,2375 (cloud-sql-proxy)"),
            ),
            (8080, Some("agents spec.podLocal[1]: podLocal ports=8080")),
            (2376, None),
            (443, None),
        ];
        for (port, expected) in table {
            assert_eq!(
                set.check_pod_local(port)
                    .map(|r| r.origin.to_string())
                    .as_deref(),
                expected,
                "port {port}"
            );
        }
        // Pod-local rules never allow anything by host name, and host rules never pod-local.
        let lo = Host::parse("127.0.0.1").unwrap();
        let any = Host::parse("db.example.com").unwrap();
        for host in [&lo, &any] {
            assert!(!set.check_tcp(host, 5432).is_allow());
            assert!(!set.check_passthrough(host, 5432).is_allow());
        }
        assert!(!set.may_allow_http(&any, 5432));
        let Verdict::Deny(misses) = check(&set, "GET", "db.example.com", 5432, "/") else {
            panic!("a pod-local rule allowed a request by name")
        };
        assert!(misses.is_empty(), "{misses:?}");
        let only_names = rules(&["domain=127.0.0.0/8", "domain=localhost"]);
        assert!(only_names.check_pod_local(5432).is_none());
    }

    #[test]
    fn pod_local_rules_refuse_the_ports_of_the_jail_and_the_sidecar() {
        let bad = [
            pod_local(&[5432, 53], None),
            pod_local(&[], Some("nothing")),
            pod_local(&[2, 15080, 15090], None),
        ];
        let CompileErrors(problems) = compile(RuleSource {
            policy: Some("p"),
            field_prefix: "spec.",
            pod_local: &bad,
            ..RuleSource::default()
        })
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.podLocal[0].ports[1]",
                "spec.podLocal[1].ports",
                "spec.podLocal[2].ports[0]",
                "spec.podLocal[2].ports[1]",
                "spec.podLocal[2].ports[2]",
            ]
        );
        assert!(
            problems[0].message.contains("port 53 cannot be pod-local"),
            "{problems:?}"
        );
        assert!(problems[0].message.contains("DNS"), "{problems:?}");
        assert!(problems[4].message.contains("metrics"), "{problems:?}");
        for port in ports::NOT_POD_LOCAL {
            assert!(reserved_port_use(port).is_some(), "{port}");
        }
        // Flags name their own place.
        let CompileErrors(problems) = compile(RuleSource {
            field_prefix: "--",
            pod_local: &[pod_local(&[8080], None), pod_local(&[53], None)],
            ..RuleSource::default()
        })
        .unwrap_err();
        assert_eq!(problems[0].field, "--allow-pod-local[1].ports[0]");
    }

    fn with_deny(allow: &[&str], deny: &[&str], tcp: &[TcpRule]) -> RuleSet {
        let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        let deny: Vec<String> = deny.iter().map(|s| (*s).to_owned()).collect();
        let compiled = compile(RuleSource {
            policy: Some("admins"),
            cluster: true,
            field_prefix: "spec.",
            allow: &allow,
            deny: &deny,
            tcp,
            ..RuleSource::default()
        })
        .unwrap();
        RuleSet::new(compiled, Mode::Enforce)
    }

    #[test]
    fn a_matching_deny_rule_beats_every_allow_rule_and_names_itself() {
        let set = with_deny(
            &["domain=*", "domain=api.example.com method=POST"],
            &[
                "domain=api.example.com method=POST path=/upload/*",
                "domain=pastebin.com",
            ],
            &[],
        );
        assert_eq!(set.rules().len(), 2);
        assert_eq!(set.deny_rules().len(), 2);
        assert!(check(&set, "POST", "api.example.com", 443, "/v1/items").is_allow());
        assert!(check(&set, "GET", "api.example.com", 443, "/upload/a").is_allow());
        let Verdict::Denied { by, overrides } =
            check(&set, "POST", "API.example.com.", 443, "/upload/a")
        else {
            panic!("the deny rule did not win")
        };
        assert_eq!(
            by.origin.to_string(),
            "ClusterBoundaryPolicy admins spec.deny[0]: domain=api.example.com method=POST \
             path=/upload/*"
        );
        assert_eq!(
            overrides.map(|r| r.origin.field.as_str()),
            Some("spec.allow[0]")
        );
        // Path normalisation applies to deny rules as to allow rules.
        assert!(matches!(
            check(&set, "POST", "api.example.com", 443, "/v1/../upload/%61"),
            Verdict::Denied { .. }
        ));
        let Verdict::Denied { by, .. } = check(&set, "GET", "pastebin.com", 8080, "/") else {
            panic!("a whole-host deny rule did not win over domain=*")
        };
        assert_eq!(by.origin.field, "spec.deny[1]");
        // Nothing allows it either: still named by the deny rule, with nothing overridden.
        let set = with_deny(&[], &["domain=pastebin.com"], &[]);
        assert!(matches!(
            check(&set, "GET", "pastebin.com", 443, "/"),
            Verdict::Denied {
                overrides: None,
                ..
            }
        ));
    }

    #[test]
    fn connections_the_proxy_cannot_look_into_are_denied_by_host_and_port() {
        let tcp = [TcpRule {
            domain: "git.example.com".into(),
            ports: vec![Port::new(22).unwrap()],
        }];
        let set = with_deny(
            &["domain=*"],
            &[
                "domain=git.example.com method=POST path=/upload",
                "domain=pastebin.com",
                "domain=*.corp.example port=443",
            ],
            &tcp,
        );
        let git = Host::parse("git.example.com").unwrap();
        let paste = Host::parse("pastebin.com").unwrap();
        let corp = Host::parse("wiki.corp.example").unwrap();
        // A TCP rule, a deny rule for the host with a method and path: denied (fail closed).
        let Verdict::Denied { by, overrides } = set.check_tcp(&git, 22) else {
            panic!("TCP allowed past a deny rule")
        };
        assert_eq!(by.origin.field, "spec.deny[0]");
        assert_eq!(overrides.unwrap().origin.field, "spec.tcp[0]");
        assert!(matches!(
            set.check_passthrough(&git, 443),
            Verdict::Denied {
                overrides: None,
                ..
            }
        ));
        assert!(matches!(set.check_tcp(&paste, 22), Verdict::Denied { .. }));
        assert!(!set.check_tcp(&corp, 22).is_allow());
        assert!(set.deny_for(&corp, 22).is_none(), "the port narrows it");
        assert!(set.deny_for(&corp, 443).is_some());
        // TLS is refused before a certificate only by a deny rule without method and path.
        assert!(
            set.may_allow_http(&git, 443),
            "requests are checked one by one"
        );
        assert!(set.whole_host_deny(&git, 443).is_none());
        assert!(!set.may_allow_http(&paste, 443));
        assert_eq!(
            set.whole_host_deny(&paste, 443).unwrap().origin.field,
            "spec.deny[1]"
        );
        assert!(!set.may_allow_http(&corp, 443) && set.may_allow_http(&corp, 8443));
    }

    #[test]
    fn deny_rules_without_a_domain_or_with_star_cover_ip_literals() {
        let set = with_deny(
            &["domain=10.0.0.0/8", "domain=example.com"],
            &["method=DELETE", "domain=* path=/admin/*"],
            &[],
        );
        assert!(check(&set, "GET", "10.1.2.3", 80, "/admin").is_allow());
        for (method, host, path) in [
            ("DELETE", "10.1.2.3", "/x"),
            ("DELETE", "example.com", "/x"),
            ("GET", "10.1.2.3", "/admin/users"),
            ("GET", "[::ffff:10.1.2.3]", "/admin/users"),
            ("GET", "example.com", "/admin/users"),
        ] {
            assert!(
                matches!(check(&set, method, host, 80, path), Verdict::Denied { .. }),
                "{method} {host} {path}"
            );
        }
    }

    #[test]
    fn deny_rules_leave_pod_local_ports_alone() {
        let deny = vec!["domain=*".to_owned(), "method=GET".to_owned()];
        let compiled = compile(RuleSource {
            field_prefix: "--",
            deny: &deny,
            pod_local: &[pod_local(&[5432], None)],
            ..RuleSource::default()
        })
        .unwrap();
        let set = RuleSet::new(compiled, Mode::Enforce);
        assert_eq!(
            set.check_pod_local(5432).map(|r| r.origin.to_string()),
            Some("--allow-pod-local[0]: podLocal ports=5432".to_owned())
        );
        assert_eq!(
            set.deny_rules()[1].origin.to_string(),
            "--deny[1]: method=GET",
            "command-line deny rules are not a ClusterBoundaryPolicy's"
        );
    }

    #[test]
    fn deny_rule_problems_carry_their_place_and_column() {
        let deny = vec![
            "domain=ok.com".to_owned(),
            "domain=pastebin.* method=POST".to_owned(),
            "domain=a.com metod=GET".to_owned(),
        ];
        let allow = vec!["domain=b.*".to_owned()];
        let CompileErrors(problems) = compile(RuleSource {
            policy: Some("admins"),
            cluster: true,
            field_prefix: "spec.",
            deny: &deny,
            allow: &allow,
            ..RuleSource::default()
        })
        .unwrap_err();
        assert_eq!(
            places(&problems),
            [
                ("spec.deny[1]", Some(17)),
                ("spec.deny[2]", Some(14)),
                ("spec.allow[0]", Some(10)),
            ]
        );
        assert!(problems[1].message.contains("did you mean `method`"));
    }

    type Headers<'h> = &'h [(&'h str, &'h [u8])];

    fn structured(domain: &str, headers: &[(&str, &str)], query: &[(&str, &str)]) -> HttpRule {
        HttpRule {
            domains: vec![domain.into()],
            headers: headers
                .iter()
                .map(|(n, g)| ((*n).to_owned(), (*g).to_owned()))
                .collect(),
            query: query
                .iter()
                .map(|(n, g)| ((*n).to_owned(), (*g).to_owned()))
                .collect(),
            ..HttpRule::default()
        }
    }

    fn check_full<'a>(
        set: &'a RuleSet,
        method: &str,
        target: &str,
        headers: &[(&str, &[u8])],
    ) -> Verdict<'a> {
        let host = Host::parse("git.example.com").unwrap();
        let path = RequestPath::parse(target).unwrap();
        set.check_http(HttpRequest {
            host: &host,
            port: 443,
            method,
            path: &path,
            headers,
            query: raw_query(target),
        })
        .clone()
    }

    #[test]
    fn structured_deny_rules_with_query_and_header_conditions_beat_allow_rules() {
        let allow = vec!["domain=git.example.com".to_owned()];
        let deny_http = [
            structured("git.example.com", &[], &[("service", "git-receive-pack")]),
            HttpRule {
                methods: vec!["POST".into()],
                paths: vec!["/*/git-receive-pack".into()],
                ..structured("git.example.com", &[], &[])
            },
            structured("git.example.com", &[("X-Agent-Mode", "yolo*")], &[]),
        ];
        let compiled = compile(RuleSource {
            policy: Some("git"),
            field_prefix: "spec.",
            allow: &allow,
            deny_http: &deny_http,
            ..RuleSource::default()
        })
        .unwrap();
        let set = RuleSet::new(compiled, Mode::Enforce);
        assert_eq!(set.deny_rules().len(), 3);
        let denied_by = |v: Verdict<'_>| v.deny_rule().map(|r| r.origin.field.clone());
        // (method, target, headers, the deny rule that wins or None for allowed)
        let table: &[(&str, &str, Headers<'_>, Option<&str>)] = &[
            ("GET", "/r.git/info/refs?service=git-upload-pack", &[], None),
            (
                "GET",
                "/r.git/info/refs?service=git-receive-pack",
                &[],
                Some("spec.denyHttp[0]"),
            ),
            (
                "GET",
                "/r.git/info/refs?%73ervice=git%2dreceive-pack",
                &[],
                Some("spec.denyHttp[0]"),
            ),
            (
                "GET",
                "/r.git/info/refs?service=git-upload-pack&service=git-receive-pack",
                &[],
                Some("spec.denyHttp[0]"),
            ),
            (
                "GET",
                "/r.git/info/refs?service=git-upload-pack%zz",
                &[],
                Some("spec.denyHttp[0]"),
            ),
            ("POST", "/r.git/git-upload-pack", &[], None),
            (
                "POST",
                "/r.git/git-receive-pack",
                &[],
                Some("spec.denyHttp[1]"),
            ),
            (
                "GET",
                "/",
                &[("x-agent-mode", b"careful"), ("X-Agent-Mode", b"yolo")],
                Some("spec.denyHttp[2]"),
            ),
            ("GET", "/", &[("x-agent-mode", b"careful")], None),
        ];
        for (method, target, headers, expected) in table {
            assert_eq!(
                denied_by(check_full(&set, method, target, headers)).as_deref(),
                *expected,
                "{method} {target} {headers:?}"
            );
        }
        // Connections the proxy cannot look into are denied by a conditional deny rule; TLS is
        // still intercepted (requests are judged one by one).
        let git = Host::parse("git.example.com").unwrap();
        assert_eq!(
            set.deny_for(&git, 443).unwrap().origin.field,
            "spec.denyHttp[0]"
        );
        assert!(set.whole_host_deny(&git, 443).is_none());
        assert!(set.may_allow_http(&git, 443));
        assert_eq!(
            set.deny_rules()[0].origin.to_string(),
            "git spec.denyHttp[0]: domains=git.example.com query=service:git-receive-pack"
        );
    }

    #[test]
    fn allow_conditions_hold_only_for_every_occurrence() {
        let http = [
            structured("git.example.com", &[], &[("service", "git-upload-pack")]),
            structured("git.example.com", &[("Authorization", "Bearer *")], &[]),
        ];
        let compiled = compile(RuleSource {
            field_prefix: "--",
            http: &http,
            ..RuleSource::default()
        })
        .unwrap();
        let set = RuleSet::new(compiled, Mode::Enforce);
        let allowed = |target, headers| check_full(&set, "GET", target, headers).is_allow();
        assert!(allowed("/info/refs?service=git-upload-pack", &[]));
        assert!(allowed("/info/refs?service=git%2Dupload-pack", &[]));
        assert!(!allowed("/info/refs?service=git-receive-pack", &[]));
        assert!(!allowed(
            "/info/refs?service=git-upload-pack&service=git-receive-pack",
            &[]
        ));
        assert!(!allowed("/info/refs?service=git-upload-pack&x=%E0", &[]));
        assert!(!allowed("/info/refs", &[]));
        assert!(allowed("/", &[("authorization", b"Bearer x")]));
        assert!(!allowed(
            "/",
            &[
                ("authorization", b"Bearer x"),
                ("Authorization", b"Basic y")
            ]
        ));
        let Verdict::Deny(misses) = check_full(&set, "GET", "/?service=x", &[]) else {
            panic!("allowed")
        };
        let kinds: Vec<Miss> = misses.iter().map(|(_, m)| *m).collect();
        assert_eq!(kinds, [Miss::Query, Miss::Header]);
    }

    #[test]
    fn condition_and_structured_deny_problems_carry_their_place() {
        let http = [
            structured(
                "a.com",
                &[("X Bad", "*"), ("X-Ok", "a\u{7}")],
                &[("a&b", "*")],
            ),
            HttpRule {
                tls: TlsMode::Passthrough,
                ..structured("b.com", &[("X-Agent", "*")], &[])
            },
        ];
        let deny_http = [
            HttpRule {
                tls: TlsMode::Passthrough,
                ..structured("c.com", &[], &[])
            },
            structured("d.com", &[("", "*")], &[]),
        ];
        let CompileErrors(problems) = compile(RuleSource {
            policy: Some("p"),
            field_prefix: "spec.",
            http: &http,
            deny_http: &deny_http,
            ..RuleSource::default()
        })
        .unwrap_err();
        assert_eq!(
            places(&problems),
            [
                ("spec.denyHttp[0].tls", None),
                ("spec.denyHttp[1].headers.", Some(1)),
                ("spec.http[0].headers.X Bad", Some(2)),
                ("spec.http[0].headers.X-Ok", Some(2)),
                ("spec.http[0].query.a&b", Some(2)),
                ("spec.http[1].tls", None),
            ]
        );
        assert!(problems[0].message.contains("cannot be Passthrough"));
        assert!(problems[5].message.contains("headers"));
    }

    #[test]
    fn a_header_and_a_query_parameter_of_one_name_each_report_their_own_column() {
        // The shape of the rule_parser fuzz input that failed CI: the fuzz target's own check
        // kept one length per name and measured the header's column against the query's glob.
        let http = [structured(
            "a.com",
            &[("q", "====G\0=====q")],
            &[("q", "*"), ("", "*")],
        )];
        let CompileErrors(problems) = compile(RuleSource {
            field_prefix: "spec.",
            http: &http,
            ..RuleSource::default()
        })
        .unwrap_err();
        assert_eq!(
            places(&problems),
            [
                ("spec.http[0].headers.q", Some(6)),
                ("spec.http[0].query.", Some(1)),
            ]
        );
    }

    #[test]
    fn a_host_no_rule_can_name_gets_no_suggestion() {
        // Found by the rule_parser fuzz target: a request to `-6z` suggested `domain=-6z`.
        let host = Host::parse("-6z").unwrap();
        let path = RequestPath::parse("/").unwrap();
        assert!(suggest(HttpRequest::new(&host, 443, "GET", &path)).is_empty());
    }

    #[test]
    fn suggestions_go_from_narrow_to_broad() {
        let host = Host::parse("api.example.com").unwrap();
        let path = RequestPath::parse("/v1/items?x=1").unwrap();
        let s = suggest(HttpRequest {
            host: &host,
            port: 443,
            method: "POST",
            path: &path,
            headers: &[],
            query: None,
        });
        assert_eq!(
            s,
            [
                "domain=api.example.com method=POST path=/v1/items",
                "domain=api.example.com method=POST",
                "domain=api.example.com"
            ]
        );
        for rule in &s {
            parse_rule(rule).expect("suggestions are valid rules");
        }
        // Paths with grammar characters are escaped, and the suggestion still allows them.
        let odd = RequestPath::parse("/a*b/c,d").unwrap();
        let req = HttpRequest {
            host: &host,
            port: 443,
            method: "GET",
            path: &odd,
            headers: &[],
            query: None,
        };
        let narrow = suggest(req)[0].clone();
        assert_eq!(
            narrow,
            "domain=api.example.com method=GET path=/a%2Ab/c%2Cd"
        );
        let compiled = compile(RuleSource {
            allow: &[narrow],
            ..RuleSource::default()
        })
        .unwrap();
        assert!(
            RuleSet::new(compiled, Mode::Enforce)
                .check_http(req)
                .is_allow()
        );
    }

    #[test]
    fn every_rule_is_named_by_its_origin_also_after_a_preset_places_it() {
        let presets: Vec<String> = crate::presets::names()
            .split(", ")
            .map(str::to_owned)
            .collect();
        let allow = vec!["domain=example.com".to_owned()];
        let deny = vec!["domain=paste.example".to_owned()];
        for (policy, cluster) in [
            (None, false),
            (Some("team"), false),
            (Some("guardrails"), true),
        ] {
            let rules = compile(RuleSource {
                policy,
                cluster,
                field_prefix: if policy.is_some() { "spec." } else { "--" },
                deny: &deny,
                presets: &presets,
                allow: &allow,
                ..RuleSource::default()
            })
            .unwrap();
            assert!(rules.len() > presets.len(), "{rules:?}");
            for rule in &rules {
                assert_eq!(&**rule.named(), rule.origin().to_string(), "{rule:?}");
            }
            assert!(
                rules.iter().any(|r| r.named().contains("preset")),
                "{rules:?}"
            );
        }
    }
}
